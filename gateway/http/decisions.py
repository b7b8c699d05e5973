"""Decisions for auditors and operators: read, search, access log, replay, rollback, verify.

Every read of a decision's context (``GET /decisions/{id}``, the decision page, a
replay) is recorded with the caller's key id and the ``X-Purpose`` header.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from contracts.audit import AccessLog, DecisionPage, ReplayRequest, ReplayResult, VerifyReport
from contracts.decisions import DecisionRecord, RollbackRequest, RollbackState
from gateway.auth import Principal, requires
from gateway.errors import BadRequest, NotFound
from gateway.http.openapi import error_responses
from gateway.http.reconciliation import with_reconciliation
from gateway.masking import PiiMasker
from gateway.replay import Replayer
from writeback import AuditStore, BadCursor, DecisionReads

PurposeHeader = Annotated[str | None, HeaderParameter(name="X-Purpose", max_length=500)]
# Filters are compared with stored text: PostgreSQL's text holds no NUL, and no id or
# name of ours has a control character.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Filter = Annotated[str | None, QueryParameter(max_length=128, pattern=_PRINTABLE)]
Cursor = Annotated[str | None, QueryParameter(max_length=200, pattern=r"^[A-Za-z0-9_-]*$")]

Audit = NamedDependency[AuditStore]
Reads = NamedDependency[DecisionReads]


async def read_decision(
    audit: AuditStore,
    reads: DecisionReads,
    masker: PiiMasker,
    decision_id: str,
    principal: Principal,
    via: Literal["api", "ui", "replay"],
    purpose: str | None,
) -> DecisionRecord:
    """The record (masked for callers without the pii scope), its read recorded.

    The record carries what reconciliation found of the values it served.

    Raises:
        NotFound: There is no such decision.
        AuditUnavailable: PostgreSQL could not be reached.
    """
    record = await audit.get(decision_id)
    if record is None:
        raise NotFound(f"no decision {decision_id}", field="decision_id")
    await reads.record(record.decision_id, principal.key_id, via, purpose)
    shown = record if principal.sees_pii else masker.record(record)
    return await with_reconciliation(shown, reads, masker, principal.sees_pii)


@get("/decisions/{decision_id:str}", opt=requires("auditor"), responses=error_responses(404, 503))
async def decision(
    decision_id: FromPath[str],
    request: Request[Principal, Any, Any],
    audit: Audit,
    reads: Reads,
    masker: NamedDependency[PiiMasker],
    purpose: PurposeHeader = None,
) -> DecisionRecord:
    """The whole decision record, with write-back and rollback state; the read is logged."""
    return await read_decision(audit, reads, masker, decision_id, request.user, "api", purpose)


@get("/decisions", opt=requires("auditor"), responses=error_responses(503))
async def search_decisions(
    reads: Reads,
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
        return await reads.search(
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
async def access_log(decision_id: FromPath[str], audit: Audit, reads: Reads) -> AccessLog:
    """Who read this decision's context, when, how and why."""
    if await audit.get(decision_id) is None:
        raise NotFound(f"no decision {decision_id}", field="decision_id")
    return await reads.access_log(decision_id)


@post(
    "/decisions/{decision_id:str}/replay",
    status_code=200,
    opt=requires("operator"),
    responses=error_responses(404, 409, 502, 503, 504),
)
async def replay_decision(
    decision_id: FromPath[str],
    request: Request[Principal, Any, Any],
    audit: Audit,
    reads: Reads,
    replayer: NamedDependency[Replayer],
    purpose: PurposeHeader = None,
    data: JSONBody[ReplayRequest | None] = None,
) -> ReplayResult:
    """Score the recorded feature vector again; nothing is written but the read."""
    record = await audit.get(decision_id)
    if record is None:
        raise NotFound(f"no decision {decision_id}", field="decision_id")
    await reads.record(record.decision_id, request.user.key_id, "replay", purpose)
    return await replayer.replay(record, data.model_version if data else None)


@post(
    "/decisions/{decision_id:str}/rollback",
    status_code=200,
    opt=requires("operator"),
    responses=error_responses(404, 503),
)
async def rollback(
    decision_id: FromPath[str],
    data: JSONBody[RollbackRequest],
    request: Request[Principal, Any, Any],
    audit: Audit,
) -> RollbackState:
    """Roll a decision back; a second rollback answers with the first."""
    result = await audit.rollback(decision_id, data.reason, request.user.key_id)
    if result is None:
        raise NotFound(f"no decision {decision_id}", field="decision_id")
    state, _ = result
    return state


@get("/audit/verify", opt=requires("auditor"), responses=error_responses(503))
async def verify_chain(reads: Reads, since: FromQuery[datetime | None] = None) -> VerifyReport:
    """Walk the decision records' hash chain and name the first record that fails."""
    return await reads.verify(since)


handlers = [decision, search_decisions, access_log, replay_decision, rollback, verify_chain]
