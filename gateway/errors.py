"""Errors the gateway answers with, each carrying its status and the field to blame."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """An error that becomes an HTTP answer with an :class:`contracts.scoring.ErrorBody`."""

    status_code = 500

    def __init__(
        self,
        detail: str,
        *,
        field: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra
        self.headers = headers or {}


class BadRequest(GatewayError):
    """The request names something unknown or carries a value of the wrong type."""

    status_code = 400


class NotFound(GatewayError):
    """No such decision (or other resource)."""

    status_code = 404


class Conflict(GatewayError):
    """The request contradicts the state it meets.

    Its ``request_id`` was used for another request (another model, other entities or
    another context), or it redrives an event that is not dead-lettered.
    """

    status_code = 409


class Unprocessable(GatewayError):
    """The request is well formed but its decision cannot be recorded.

    A value the gateway gathered for it (a served feature's lineage) is one PostgreSQL
    cannot keep.
    """

    status_code = 422


class Unavailable(GatewayError):
    """A dependency the answer cannot do without is down.

    A feature whose policy is ``fail``, the model server, or PostgreSQL.
    """

    status_code = 503


class DeadlineExceeded(GatewayError):
    """The request's deadline passed before the model answered."""

    status_code = 504
