"""How every route answers an error: one JSON body naming the status, detail and field.

:class:`~gateway.errors.GatewayError` carries its own status and field; a failure of
PostgreSQL (:class:`writeback.AuditUnavailable`) is a 503 that says when to come
back, or a 400 when the value it could not hold is the caller's; a validation error
is a 400 naming the field as the caller sent it; anything else is logged and is a 500
that reveals nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import Empty, ExceptionHandlersMap
from litestar.utils.scope.state import ScopeState

from contracts.scoring import ErrorBody
from gateway.errors import BadRequest, GatewayError, Unavailable
from gateway.field_paths import misfit
from writeback import AuditUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
"""What a 503 tells callers to wait before they try again, in seconds."""


def caused_by(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first error of type ``kind`` in ``exc``'s chain of causes, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def store_error(exc: AuditUnavailable) -> GatewayError:
    """The answer to a failure of PostgreSQL: 503, or 400 for a value it cannot hold.

    Every route that needs PostgreSQL answers its outage alike, whether the database
    is unreachable, refuses connections, or is a read-only (demoted) primary.
    """
    if isinstance(exc.cause, asyncpg.DataError):
        return BadRequest(f"the request carries a value that cannot be stored: {exc.cause}")
    return Unavailable(
        "the audit store (PostgreSQL) is unavailable; retry shortly",
        field="audit",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def as_answered(exc: GatewayError) -> GatewayError:
    """The error to answer: one PostgreSQL refused for a value of the caller is a 400.

    A route may wrap the audit store's failure in an error of its own (``/score``
    does); a value PostgreSQL cannot hold (a NUL in a text) is still the caller's.
    """
    store = caused_by(exc, AuditUnavailable)
    if isinstance(store, AuditUnavailable) and isinstance(store.cause, asyncpg.DataError):
        return store_error(store)
    return exc


def with_retry_after(exc: GatewayError) -> dict[str, str]:
    """The error's headers; a 503 always says when to come back."""
    if exc.status_code == 503 and "retry-after" not in {name.lower() for name in exc.headers}:
        return {**exc.headers, "Retry-After": str(RETRY_AFTER_S)}
    return exc.headers


def blamed_field(request: Request[Any, Any, Any], error: dict[str, Any]) -> str | None:
    """The field a validation error blames.

    A parameter is named as the caller sends it, a body field dotted from the top
    (``context.amount``, ``lineage.surprise``).
    """
    key = str(error.get("key") or "")
    if error.get("source") != "body":
        return _parameter_name(request, key) or None
    data = request.route_handler.parsed_data_field
    body = ScopeState.from_scope(request.scope).json
    if data is None or body is Empty:
        return None
    return ".".join(misfit(body, data.annotation)) or None


def _parameter_name(request: Request[Any, Any, Any], key: str) -> str:
    """A parameter as the caller names it (``X-Request-Timeout-Ms``, not ``timeout_ms``)."""
    parameter = request.route_handler.parsed_fn_signature.parameters.get(key)
    kwarg = parameter.kwarg_definition if parameter else None
    names = (getattr(kwarg, alias, None) for alias in ("header", "query", "cookie", "name"))
    return next((name for name in names if isinstance(name, str) and name), key)


def _gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[ErrorBody]:
    exc = as_answered(exc)
    body = ErrorBody(
        status_code=exc.status_code, detail=exc.detail, field=exc.field, extra=exc.extra
    )
    return Response(body, status_code=exc.status_code, headers=with_retry_after(exc))


def _store_error(request: Request[Any, Any, Any], exc: AuditUnavailable) -> Response[ErrorBody]:
    return _gateway_error(request, store_error(exc))


def _validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[ErrorBody]:
    field = None
    detail = exc.detail
    if isinstance(exc.extra, list) and exc.extra and isinstance(exc.extra[0], dict):
        first = exc.extra[0]
        detail = str(first.get("message", detail))
        field = blamed_field(request, first)
    return Response(ErrorBody(status_code=400, detail=detail, field=field), status_code=400)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    body = ErrorBody(status_code=exc.status_code, detail=exc.detail)
    return Response(body, status_code=exc.status_code, headers=exc.headers)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(ErrorBody(status_code=500, detail="internal error"), status_code=500)


exception_handlers: ExceptionHandlersMap = {
    GatewayError: _gateway_error,
    AuditUnavailable: _store_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}
"""The API's answer to each kind of error, most specific first."""
