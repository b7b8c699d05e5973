"""Operators' endpoints: the dead-letter queue, its redrive, and ``/metrics``."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, Parameter

from contracts.deadletters import DeadLetter, DeadLetterPage
from gateway import metrics
from gateway.auth import Principal, requires
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.health import HealthChecks
from gateway.http.openapi import error_responses
from gateway.observability import observe_breakers
from writeback import BadDeadLetterCursor, DeadLetterQueue, NotDeadLettered

DeadLetters = NamedDependency[DeadLetterQueue]
Health = NamedDependency[HealthChecks]


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
async def list_dead_letters(
    dead_letters: DeadLetters, limit: PageSize = 50, cursor: Cursor = None
) -> DeadLetterPage:
    """Outcome events in the dead-letter queue, oldest first, with their last error."""
    try:
        return await dead_letters.list(limit, cursor)
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
    request: Request[Principal, Any, Any],
    dead_letters: DeadLetters,
) -> DeadLetter:
    """Publish a dead-lettered event again under the same ``ce_id``.

    Later events of its subject, held behind it, follow once it is delivered.
    404: no such event; 409: the event is pending or delivered.
    """
    try:
        letter = await dead_letters.redrive(event_id, request.user.key_id)
    except NotDeadLettered as exc:
        raise Conflict(str(exc), field="event_id", extra={"status": exc.status}) from exc
    if letter is None:
        raise NotFound(f"no event {event_id}", field="event_id")
    return letter


async def _metrics(health: HealthChecks, dead_letters: DeadLetterQueue) -> Response[bytes]:
    observe_breakers(health.breakers().items())
    body = await metrics.render(dead_letters)
    return Response(body, media_type=metrics.CONTENT_TYPE)


@get("/metrics", opt={"exclude_from_auth": True}, include_in_schema=False)
async def public_metrics(health: Health, dead_letters: DeadLetters) -> Response[bytes]:
    """Prometheus metrics, served without a key (``SCOREGATE_METRICS_PUBLIC``)."""
    return await _metrics(health, dead_letters)


@get("/metrics", opt=requires("operator"), include_in_schema=False)
async def operator_metrics(health: Health, dead_letters: DeadLetters) -> Response[bytes]:
    """Prometheus metrics, for operator keys only."""
    return await _metrics(health, dead_letters)


def handlers(*, metrics_public: bool) -> list[HTTPRouteHandler]:
    """The operators' handlers, with ``/metrics`` open or behind the operator role."""
    return [list_dead_letters, redrive, public_metrics if metrics_public else operator_metrics]
