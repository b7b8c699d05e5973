"""Auditor and operator routes over decisions: search, access log, replay, verify; and
how every route answers a failure of PostgreSQL.

Every read of a decision's context (``GET /decisions/{id}``, the decision page, a
replay) is recorded with the caller's key id and the ``X-Purpose`` header.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import asyncpg
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from contracts.audit import AccessLog, DecisionPage, ReplayRequest, ReplayResult, VerifyReport
from contracts.decisions import DecisionRecord
from gateway.auth import Principal, requires
from gateway.errors import BadRequest, GatewayError, NotFound, Unavailable
from gateway.openapi import error_responses
from writeback.audit_store import AuditUnavailable
from writeback.decision_reads import BadCursor

if TYPE_CHECKING:
    from gateway.app import Gateway

PurposeHeader = Annotated[str | None, HeaderParameter(name="X-Purpose", max_length=500)]
# Filters are compared with stored text: PostgreSQL's text holds no NUL, and no id or
# name of ours has a control character.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Filter = Annotated[str | None, QueryParameter(max_length=128, pattern=_PRINTABLE)]
Cursor = Annotated[str | None, QueryParameter(max_length=200, pattern=r"^[A-Za-z0-9_-]*$")]

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


async def read_decision(
    gateway: Gateway,
    decision_id: str,
    principal: Principal,
    via: Literal["api", "ui", "replay"],
    purpose: str | None,
) -> DecisionRecord:
    """The record (masked for callers without the pii scope), its read recorded.

    Raises:
        NotFound: There is no such decision.
        AuditUnavailable: PostgreSQL could not be reached.
    """
    record = await gateway.audit.get(decision_id)
    if record is None:
        raise NotFound(f"no decision {decision_id}", field="decision_id")
    await gateway.reads.record(record.decision_id, principal.key_id, via, purpose)
    return record if principal.sees_pii else gateway.masker.record(record)


@get("/decisions", opt=requires("auditor"), responses=error_responses(503))
async def search_decisions(
    gateway: NamedDependency[Gateway],
    subject: Filter = None,
    model: Filter = None,
    status: FromQuery[Literal["made", "rolled_back"] | None] = None,
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> DecisionPage:
    """Decisions matching the filters, newest first, a page at a time."""
    try:
        return await gateway.reads.search(
            subject=subject,
            model=model,
            status=status,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
    except BadCursor as exc:
        raise BadRequest(str(exc), field="cursor") from exc


@get(
    "/decisions/{decision_id:str}/access-log",
    opt=requires("auditor"),
    responses=error_responses(404, 503),
)
async def access_log(decision_id: FromPath[str], gateway: NamedDependency[Gateway]) -> AccessLog:
    """Who read this decision's context, when, how and why."""
    if await gateway.audit.get(decision_id) is None:
        raise NotFound(f"no decision {decision_id}", field="decision_id")
    return await gateway.reads.access_log(decision_id)


@post(
    "/decisions/{decision_id:str}/replay",
    status_code=200,
    opt=requires("operator"),
    responses=error_responses(404, 409, 502, 503, 504),
)
async def replay_decision(
    decision_id: FromPath[str],
    gateway: NamedDependency[Gateway],
    request: Request[Principal, Any, Any],
    purpose: PurposeHeader = None,
    data: JSONBody[ReplayRequest | None] = None,
) -> ReplayResult:
    """Score the recorded feature vector again; nothing is written but the read."""
    record = await gateway.audit.get(decision_id)
    if record is None:
        raise NotFound(f"no decision {decision_id}", field="decision_id")
    await gateway.reads.record(record.decision_id, request.user.key_id, "replay", purpose)
    return await gateway.replayer.replay(record, data.model_version if data else None)


@get("/audit/verify", opt=requires("auditor"), responses=error_responses(503))
async def verify_chain(
    gateway: NamedDependency[Gateway], since: FromQuery[datetime | None] = None
) -> VerifyReport:
    """Walk the decision records' hash chain and name the first record that fails."""
    return await gateway.reads.verify(since)


audit_handlers = [search_decisions, access_log, replay_decision, verify_chain]
