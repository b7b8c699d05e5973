"""Operators' endpoints: the dead-letter queue, its redrive, and ``/metrics``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, Parameter

from contracts.deadletters import DeadLetter, DeadLetterPage
from gateway import metrics
from gateway.auth import Principal, requires
from gateway.errors import BadRequest, GatewayError, NotFound
from gateway.observability import observe_breakers
from gateway.openapi import error_responses
from writeback.dead_letters import BadDeadLetterCursor, NotDeadLettered

if TYPE_CHECKING:
    from gateway.app import Gateway


class Conflict(GatewayError):
    """The request conflicts with the resource's state (a redrive of an event that
    is not dead-lettered)."""

    status_code = 409


PageSize = Annotated[int, Parameter(ge=1, le=500, description="dead letters per page")]
Cursor = Annotated[
    str | None,
    Parameter(
        description="the next_cursor of the previous page",
        required=False,
        max_length=20,
        pattern=r"^[0-9]*$",
    ),
]


@get("/dlq", opt=requires("operator"), responses=error_responses(503))
async def dead_letters(
    gateway: NamedDependency[Gateway], limit: PageSize = 50, cursor: Cursor = None
) -> DeadLetterPage:
    """Outcome events in the dead-letter queue, oldest first, with their last error."""
    try:
        return await gateway.dead_letters.list(limit, cursor)
    except BadDeadLetterCursor as exc:
        raise BadRequest(str(exc), field="cursor") from exc


@post(
    "/dlq/{event_id:str}/redrive",
    status_code=200,
    opt=requires("operator"),
    responses=error_responses(404, 409, 503),
)
async def redrive(
    event_id: FromPath[str],
    gateway: NamedDependency[Gateway],
    request: Request[Principal, Any, Any],
) -> DeadLetter:
    """Publish a dead-lettered event again under the same ``ce_id``.

    Later events of its subject, held behind it, follow once it is delivered.
    404: no such event; 409: the event is pending or delivered.
    """
    try:
        letter = await gateway.dead_letters.redrive(event_id, request.user.key_id)
    except NotDeadLettered as exc:
        raise Conflict(str(exc), field="event_id", extra={"status": exc.status}) from exc
    if letter is None:
        raise NotFound(f"no event {event_id}", field="event_id")
    return letter


async def _metrics(gateway: Gateway) -> Response[bytes]:
    observe_breakers(gateway.breakers().items())
    body = await metrics.render(gateway.dead_letters)
    return Response(body, media_type=metrics.CONTENT_TYPE)


@get("/metrics", opt={"exclude_from_auth": True}, include_in_schema=False)
async def public_metrics(gateway: NamedDependency[Gateway]) -> Response[bytes]:
    """Prometheus metrics, served without a key (``SCOREGATE_METRICS_PUBLIC``)."""
    return await _metrics(gateway)


@get("/metrics", opt=requires("operator"), include_in_schema=False)
async def operator_metrics(gateway: NamedDependency[Gateway]) -> Response[bytes]:
    """Prometheus metrics, for operator keys only."""
    return await _metrics(gateway)


def operation_handlers(*, metrics_public: bool) -> list[HTTPRouteHandler]:
    """The operators' handlers, with ``/metrics`` open or behind the operator role."""
    return [dead_letters, redrive, public_metrics if metrics_public else operator_metrics]
