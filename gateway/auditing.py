"""Auditor and operator routes over decisions: search, access log, replay, verify.

Every read of a decision's context (``GET /decisions/{id}``, the decision page, a
replay) is recorded with the caller's key id and the ``X-Purpose`` header.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from contracts.audit import AccessLog, DecisionPage, ReplayRequest, ReplayResult, VerifyReport
from contracts.decisions import DecisionRecord
from gateway.auth import Principal, requires
from gateway.errors import BadRequest, NotFound, Unavailable
from writeback.audit_store import AuditUnavailable
from writeback.decision_reads import BadCursor
from writeback.seals import verify

if TYPE_CHECKING:
    from gateway.app import Gateway

PurposeHeader = Annotated[str | None, HeaderParameter(name="X-Purpose", max_length=500)]


async def read_decision(
    gateway: Gateway,
    decision_id: str,
    principal: Principal,
    via: Literal["api", "ui", "replay"],
    purpose: str | None,
) -> DecisionRecord:
    """The record (masked for callers without the pii scope), its read recorded."""
    try:
        record = await gateway.audit.get(decision_id)
        if record is None:
            raise NotFound(f"no decision {decision_id}", field="decision_id")
        await gateway.reads.record(record.decision_id, principal.key_id, via, purpose)
    except AuditUnavailable as exc:
        raise Unavailable("the audit store is unavailable", field="audit") from exc
    return record if principal.sees_pii else gateway.masker.record(record)


@get("/decisions", opt=requires("auditor"))
async def search_decisions(
    gateway: NamedDependency[Gateway],
    subject: Annotated[str | None, QueryParameter(max_length=128)] = None,
    model: Annotated[str | None, QueryParameter(max_length=64)] = None,
    status: FromQuery[Literal["made", "rolled_back"] | None] = None,
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
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


@get("/decisions/{decision_id:str}/access-log", opt=requires("auditor"))
async def access_log(decision_id: FromPath[str], gateway: NamedDependency[Gateway]) -> AccessLog:
    """Who read this decision's context, when, how and why."""
    if await gateway.audit.get(decision_id) is None:
        raise NotFound(f"no decision {decision_id}", field="decision_id")
    return await gateway.reads.access_log(decision_id)


@post("/decisions/{decision_id:str}/replay", status_code=200, opt=requires("operator"))
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


@get("/audit/verify", opt=requires("auditor"))
async def verify_chain(
    gateway: NamedDependency[Gateway], since: FromQuery[datetime | None] = None
) -> VerifyReport:
    """Walk the decision records' hash chain and name the first record that fails."""
    return await verify(gateway.pool, since)


audit_handlers = [search_decisions, access_log, replay_decision, verify_chain]
