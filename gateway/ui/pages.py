"""The pages' handlers: login, logout, the decision search, one decision, freshness.

The pages are left out of the API's authentication middleware and check the cookie
themselves (the ``viewer`` dependency), so that a missing or bad key leads to the
login form instead of a JSON 401. Errors are pages too, in words.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, PermissionDeniedException, ValidationException
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Redirect, Template
from litestar.types import ExceptionHandlersMap

from contracts.freshness_alerts import AlertStatus
from gateway.auth import COOKIE, KeyRing, Principal
from gateway.errors import GatewayError
from gateway.freshness.report import FreshnessReporter
from gateway.http.decisions import read_decision
from gateway.http.errors import as_answered, store_error, with_retry_after
from gateway.http.freshness_alerts import current_alerts
from gateway.http.reconciliation import latest_runs
from gateway.masking import PiiMasker
from gateway.registry import Registry
from gateway.ui.views import feature_rows, timeline_rows
from writeback import (
    AuditStore,
    AuditUnavailable,
    BadCursor,
    DecisionReads,
    FreshnessAlertStore,
    ReconciliationStore,
)

log = logging.getLogger(__name__)

_PUBLIC = {"exclude_from_auth": True}
_HOME = "/ui/decisions"
_FRESHNESS = "/ui/freshness"
# Findings of a feature's latest reconciliation run the freshness page lists.
_PAGE_FINDINGS = 10
# Where a login may send the browser afterwards: a page of ours, nothing else.
_NEXT = re.compile(r"/ui/[A-Za-z0-9/_.~%?&=+:-]*")


class LoginForm(msgspec.Struct, frozen=True, kw_only=True):
    """The login form: an API key, and the page to return to."""

    key: Annotated[str, msgspec.Meta(max_length=512)] = ""
    next: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class _LoginRequired(Exception):
    """The page needs a valid key; the browser is sent to the login form."""

    def __init__(self, back: str) -> None:
        super().__init__(back)
        self.back = back


class _PageError(HTTPException):
    """An error the page explains in words."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail=detail, status_code=status_code)


def _safe_next(target: str | None) -> str:
    return target if target and _NEXT.fullmatch(target) else _HOME


def _cookie_principal(request: Request[Any, Any, Any], keyring: KeyRing) -> Principal:
    presented = request.cookies.get(COOKIE, "")
    principal = keyring.authenticate(presented) if presented else None
    if principal is None:
        query = request.url.query
        raise _LoginRequired(request.url.path + (f"?{query}" if query else ""))
    return principal


def viewer(request: Request[Any, Any, Any], keyring: NamedDependency[KeyRing]) -> Principal:
    """The principal of the page's cookie; login form without one, 403 without the role."""
    principal = _cookie_principal(request, keyring)
    if not principal.has("auditor"):
        raise PermissionDeniedException(
            f"key {principal.key_id} does not hold the auditor role: decisions are not shown"
        )
    return principal


def _optional(text: str | None) -> str | None:
    return (text.strip() or None) if text else None


def _moment(text: str | None, name: str) -> datetime | None:
    """A time from a filter field; without an offset it is taken as UTC."""
    if not (text := _optional(text)):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _PageError(400, f"{name}: not a date and time ({text!r})") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


Filter = Annotated[str | None, QueryParameter(max_length=128)]
_STATUSES: dict[str | None, Literal["made", "rolled_back"] | None] = {
    None: None,
    "made": "made",
    "rolled_back": "rolled_back",
}


@get("/", opt=_PUBLIC, include_in_schema=False, status_code=303)
async def home() -> Redirect:
    """The search page is where the pages start."""
    return Redirect(_HOME, status_code=303)


@get("/login", opt=_PUBLIC, include_in_schema=False)
async def login_form(
    back: Annotated[str | None, QueryParameter(name="next", max_length=1000)] = None,
) -> Template:
    """The login form."""
    return Template("login.html", context={"next": _safe_next(back), "message": None})


@post("/login", opt=_PUBLIC, include_in_schema=False, status_code=303)
async def login(
    data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    request: Request[Any, Any, Any],
    keyring: NamedDependency[KeyRing],
) -> Response[Any]:
    """Check the key and keep it in the page's cookie; the form again if it is wrong."""
    back = _safe_next(data.next)
    key = data.key.strip()
    principal = keyring.authenticate(key) if key else None
    if principal is None:
        context = {"next": back, "message": "That key is not valid."}
        return Template("login.html", context=context, status_code=401)
    if not (principal.has("auditor") or principal.has("operator")):
        message = f"Key {principal.key_id} does not hold the auditor role (nor the operator role)."
        return Template("login.html", context={"next": back, "message": message}, status_code=403)
    if not principal.has("auditor") and back == _HOME:
        # Operators read the freshness page; the decisions are the auditors'.
        back = _FRESHNESS
    cookie = Cookie(
        key=COOKIE,
        value=key,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return Redirect(back, status_code=303, cookies=[cookie])


@post("/logout", opt=_PUBLIC, include_in_schema=False, status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    """Forget the key."""
    gone = Cookie(
        key=COOKIE,
        value="",
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=0,
    )
    return Redirect("/ui/login", status_code=303, cookies=[gone])


@get("/decisions", opt=_PUBLIC, include_in_schema=False)
async def search_page(
    reads: NamedDependency[DecisionReads],
    registry: NamedDependency[Registry],
    viewer: NamedDependency[Principal],
    subject: Filter = None,
    model: Filter = None,
    status: Filter = None,
    since: Filter = None,
    until: Filter = None,
    purpose: Annotated[str | None, QueryParameter(max_length=500)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
) -> Template:
    """Search decisions by subject, model, status and time; newest first, a page at a time."""
    wanted = _optional(status)
    if wanted not in _STATUSES:
        raise _PageError(400, f"status: {wanted!r} is not made or rolled_back")
    filters = {
        "subject": _optional(subject),
        "model": _optional(model),
        "status": wanted,
        "since": _optional(since),
        "until": _optional(until),
        "purpose": _optional(purpose),
    }
    try:
        page = await reads.search(
            subject=filters["subject"],
            model=filters["model"],
            status=_STATUSES[wanted],
            since=_moment(since, "since"),
            until=_moment(until, "until"),
            limit=limit,
            cursor=_optional(cursor),
        )
    except BadCursor as exc:
        raise _PageError(400, "cursor: not a cursor of this search") from exc
    kept = {name: value for name, value in filters.items() if value}
    if limit != 50:
        kept["limit"] = str(limit)
    next_page = None
    if page.next_cursor:
        next_page = f"{_HOME}?{urlencode({**kept, 'cursor': page.next_cursor})}"
    read_suffix = f"?{urlencode({'purpose': kept['purpose']})}" if "purpose" in kept else ""
    return Template(
        "decisions.html",
        context={
            "viewer": viewer,
            "filters": filters,
            "models": sorted(registry.models),
            "page": page,
            "next_page": next_page,
            "first_page": f"{_HOME}?{urlencode(kept)}" if cursor else None,
            "read_suffix": read_suffix,
        },
    )


@get("/decisions/{decision_id:str}", opt=_PUBLIC, include_in_schema=False)
async def decision_page(
    decision_id: FromPath[str],
    audit: NamedDependency[AuditStore],
    reads: NamedDependency[DecisionReads],
    masker: NamedDependency[PiiMasker],
    viewer: NamedDependency[Principal],
    purpose: Annotated[str | None, QueryParameter(max_length=500)] = None,
) -> Template:
    """One decision: its model, features with staleness and lineage, write-back, reads."""
    record = await read_decision(
        audit, reads, masker, decision_id, viewer, "ui", _optional(purpose)
    )
    access = await reads.access_log(record.decision_id)
    return Template(
        "decision.html",
        context={
            "viewer": viewer,
            "record": record,
            "features": feature_rows(record),
            "timeline": timeline_rows(record),
            "reads": access.entries,
        },
    )


@get("/freshness", opt=_PUBLIC, include_in_schema=False)
async def freshness_page(
    request: Request[Any, Any, Any],
    keyring: NamedDependency[KeyRing],
    freshness: NamedDependency[FreshnessReporter],
    registry: NamedDependency[Registry],
    alert_states: NamedDependency[FreshnessAlertStore],
    reconciliation_runs: NamedDependency[ReconciliationStore],
    masker: NamedDependency[PiiMasker],
    feature: Filter = None,
) -> Template:
    """Every feature's SLA against how it was served, and what fed it (auditors, operators)."""
    principal = _cookie_principal(request, keyring)
    if not (principal.has("auditor") or principal.has("operator")):
        raise PermissionDeniedException(
            f"key {principal.key_id} holds neither the auditor nor the operator role:"
            " freshness is not shown"
        )
    wanted = _optional(feature)
    if wanted is not None and wanted not in registry.features:
        raise _PageError(404, f"feature: {wanted!r} is not in the registry")
    report = await freshness.report(wanted)
    alerts: dict[str, list[AlertStatus]] = {}
    for status in (await current_alerts(alert_states, registry, changes=0)).alerts:
        alerts.setdefault(status.feature, []).append(status)
    names = [wanted] if wanted is not None else list(registry.features)
    runs = await latest_runs(reconciliation_runs, names, _PAGE_FINDINGS, masker, principal.sees_pii)
    return Template(
        "freshness.html",
        context={
            "viewer": principal,
            "report": report,
            "feature": wanted,
            "features": list(registry.features),
            "alerts": alerts,
            "reconciliation": {run.feature: run for run in runs},
        },
    )


def _error_page(status_code: int, detail: str, headers: dict[str, str] | None = None) -> Template:
    titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 503: "Unavailable"}
    return Template(
        "error.html",
        context={
            "status_code": status_code,
            "title": titles.get(status_code, "Something went wrong"),
            "detail": detail,
        },
        status_code=status_code,
        headers=headers,
    )


def _to_login(request: Request[Any, Any, Any], exc: _LoginRequired) -> Response[Any]:
    return Redirect(f"/ui/login?next={quote(exc.back, safe='/')}", status_code=303)


def _http_page(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    detail = exc.detail
    if isinstance(exc.extra, list):
        found = [
            f"{item.get('key', 'request')}: {item.get('message')}"
            for item in exc.extra
            if isinstance(item, dict)
        ]
        detail = "; ".join(found) or detail
    return _error_page(exc.status_code, detail)


def _gateway_page(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    exc = as_answered(exc)
    return _error_page(exc.status_code, exc.detail, with_retry_after(exc))


def _store_page(request: Request[Any, Any, Any], exc: AuditUnavailable) -> Response[Any]:
    return _gateway_page(request, store_error(exc))


def _internal_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_page(500, "The page could not be made; the error is logged.")


handlers = [home, login_form, login, logout, search_page, decision_page, freshness_page]

exception_handlers: ExceptionHandlersMap = {
    _LoginRequired: _to_login,
    HTTPException: _http_page,
    # The app's JSON answer to validation errors is more specific than HTTPException.
    ValidationException: _http_page,
    GatewayError: _gateway_page,
    AuditUnavailable: _store_page,
    Exception: _internal_page,
}
"""Every error of a page answered as a page (or a redirect to the login form)."""
