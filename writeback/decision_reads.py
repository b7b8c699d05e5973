"""Reading decisions as an auditor.

The access log of each decision, keyset search and the hash chain's verification.
Every read of a decision's context is recorded (who, when, how, why); search lists
summaries only, newest first, with an opaque cursor over ``(decided_at, decision_id)``
so that a page costs the same at the millionth row as at the first. A failure of
PostgreSQL surfaces as :class:`~writeback.errors.AuditUnavailable`, as it does
from the audit store.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from contracts.audit import (
    AccessEntry,
    AccessLog,
    DecisionPage,
    DecisionSummary,
    ReadVia,
    VerifyReport,
)
from contracts.decisions import DecisionRecord, FeatureCheck, Subject
from contracts.scoring import ModelRef

# Re-exported: callers import BadCursor from here.
from writeback.errors import BadCursor as BadCursor
from writeback.errors import unavailable_on_error
from writeback.reconciliation import feature_checks
from writeback.seals import verify

_RECORD_READ = """
INSERT INTO decision_reads (decision_id, key_id, via, purpose) VALUES ($1, $2, $3, $4)
"""

_ACCESS_LOG = """
SELECT key_id, read_at, via, purpose FROM decision_reads
WHERE decision_id = $1 ORDER BY seq
"""

_SEARCH = """
SELECT d.decision_id, d.request_id, d.model_name, d.model_version, d.subject_entity,
       d.subject_id, d.decided_at,
       d.record -> 'subject' ->> 'key' AS subject_key,
       d.record ->> 'decision' AS decision,
       (d.record ->> 'degraded')::boolean AS degraded,
       EXISTS (SELECT 1 FROM rollbacks AS r WHERE r.decision_id = d.decision_id) AS rolled_back
FROM decisions AS d
WHERE ($1::text IS NULL OR d.subject_id = $1)
  AND ($2::text IS NULL OR d.model_name = $2)
  AND ($3::timestamptz IS NULL OR d.decided_at >= $3)
  AND ($4::timestamptz IS NULL OR d.decided_at < $4)
  AND ($5::timestamptz IS NULL OR (d.decided_at, d.decision_id) < ($5, $6::uuid))
  AND ($7::text IS NULL
       OR ($7 = 'rolled_back') = EXISTS (
           SELECT 1 FROM rollbacks AS r WHERE r.decision_id = d.decision_id))
ORDER BY d.decided_at DESC, d.decision_id DESC
LIMIT $8
"""


class _Cursor(msgspec.Struct, array_like=True, frozen=True):
    decided_at: datetime
    decision_id: str


_encode_cursor = msgspec.msgpack.Encoder().encode
_decode_cursor = msgspec.msgpack.Decoder(_Cursor).decode


def encode_cursor(decided_at: datetime, decision_id: str) -> str:
    """An opaque cursor after the given decision.

    Args:
        decided_at: When the decision was made.
        decision_id: The decision's UUID.

    Returns:
        URL-safe base64 without padding; a search given it lists what comes after
        that decision, newest first.
    """
    raw = _encode_cursor(_Cursor(decided_at=decided_at, decision_id=decision_id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> _Cursor:
    """The position a cursor names.

    Args:
        cursor: A cursor from :func:`encode_cursor`.

    Returns:
        The decision time and id the cursor was made after.

    Raises:
        BadCursor: The cursor is not one of ours.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = _decode_cursor(raw)
        uuid.UUID(position.decision_id)
    except (ValueError, msgspec.DecodeError) as exc:
        raise BadCursor("cursor is not valid") from exc
    return position


class DecisionReads:
    """The access log, decision search and chain verification, on the shared pool.

    Every method raises :class:`~writeback.errors.AuditUnavailable` when
    PostgreSQL cannot be reached or refuses the statement.

    Args:
        pool: The shared pool; each method runs one statement (or, for
            :meth:`verify`, one per batch) on a connection of it.
        verify_pace: How long :meth:`verify` rests after each batch, as a multiple of
            the batch's time (see :func:`writeback.seals.verify`).
    """

    def __init__(self, pool: asyncpg.Pool, verify_pace: float = 0.0) -> None:
        self._pool = pool
        self._verify_pace = verify_pace

    async def record(
        self, decision_id: str, key_id: str, via: ReadVia, purpose: str | None
    ) -> None:
        """Record one read of a decision's context.

        Args:
            decision_id: The decision's UUID.
            key_id: The API key that read it.
            via: How it was read.
            purpose: Why, as the reader gave it.

        Raises:
            ValueError: ``decision_id`` is not a UUID.
        """
        with unavailable_on_error("record the read"):
            await self._pool.execute(_RECORD_READ, uuid.UUID(decision_id), key_id, via, purpose)

    async def reconciliation(self, record: DecisionRecord) -> dict[str, FeatureCheck]:
        """Per stored feature of a decision, what reconciliation found of the value served.

        Args:
            record: The decision.

        Returns:
            The checks of the runs that read the very values served (their lineage
            ids), by feature; features no run covered are absent.
        """
        served = [
            (name, lineage.entity_id, lineage.lineage_id)
            for name, lineage in record.lineage.items()
            if name in record.features
        ]
        return await feature_checks(self._pool, served)

    async def access_log(self, decision_id: str) -> AccessLog:
        """Every recorded read of a decision, oldest first.

        Args:
            decision_id: The decision's UUID.

        Returns:
            The reads; none for a decision never read (or not made).

        Raises:
            ValueError: ``decision_id`` is not a UUID.
        """
        with unavailable_on_error("read the access log"):
            rows = await self._pool.fetch(_ACCESS_LOG, uuid.UUID(decision_id))
        return AccessLog(
            decision_id=decision_id,
            entries=[
                AccessEntry(
                    decision_id=decision_id,
                    key_id=row["key_id"],
                    read_at=row["read_at"],
                    via=row["via"],
                    purpose=row["purpose"],
                )
                for row in rows
            ],
        )

    async def search(
        self,
        *,
        subject: str | None = None,
        model: str | None = None,
        status: Literal["made", "rolled_back"] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> DecisionPage:
        """One page of decisions matching every given filter, newest first.

        Args:
            subject: The subject's entity id.
            model: The model's name.
            status: Only decisions made and not rolled back, or only rolled back ones.
            since: Decided at or after this time.
            until: Decided before this time.
            limit: Page size.
            cursor: ``next_cursor`` of the previous page.

        Returns:
            The page; its ``next_cursor`` is None on the last one.

        Raises:
            BadCursor: The cursor is not one a search gave out.
        """
        after = decode_cursor(cursor) if cursor else None
        with unavailable_on_error("search decisions"):
            rows = await self._pool.fetch(
                _SEARCH,
                subject,
                model,
                since,
                until,
                after.decided_at if after else None,
                after.decision_id if after else None,
                status,
                limit + 1,
            )
        items = [
            DecisionSummary(
                decision_id=str(row["decision_id"]),
                request_id=row["request_id"],
                model=ModelRef(name=row["model_name"], version=row["model_version"]),
                subject=Subject(
                    entity=row["subject_entity"], key=row["subject_key"], id=row["subject_id"]
                ),
                decision=row["decision"],
                degraded=row["degraded"],
                status="rolled_back" if row["rolled_back"] else "made",
                decided_at=row["decided_at"],
            )
            for row in rows[:limit]
        ]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor(last.decided_at, last.decision_id)
        return DecisionPage(items=items, next_cursor=next_cursor)

    async def verify(self, since: datetime | None = None) -> VerifyReport:
        """Walk the hash chain (from the last seal before ``since``) and check it.

        Args:
            since: Check only seals of records committed from then on; all when None.

        Returns:
            The verdict, as :func:`writeback.seals.verify` gives it.
        """
        with unavailable_on_error("verify the hash chain"):
            return await verify(self._pool, since, pace=self._verify_pace)
