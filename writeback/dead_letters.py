"""The dead-letter queue: listing dead-lettered events and redriving them.

A dead-lettered event keeps its outbox row (``status = 'dead_lettered'``) with its
payload, so a redrive needs nothing from the dead-letter topic: the row goes back to
``pending`` with its ``ce_id`` unchanged and the relay publishes it again, ahead of
the later events of its key that waited behind it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from contracts.deadletters import DeadLetter, DeadLetterPage
from writeback.config import WritebackConfig
from writeback.errors import STORE_ERRORS, AuditUnavailable

# Re-exported: callers import these errors from here.
from writeback.errors import BadDeadLetterCursor as BadDeadLetterCursor
from writeback.errors import NotDeadLettered as NotDeadLettered

_COLUMNS = """
o.seq, o.event_id, o.decision_id, o.event_type, o.topic, o.message_key, o.status,
o.dead_letter_reason, o.error_class, o.last_error, o.attempts, o.first_failed_at,
o.last_failed_at, o.created_at, o.dead_lettered_at, o.dlq_topic, o.dlq_partition,
o.dlq_offset, o.redrives,
(SELECT count(*) FROM outbox AS p
 WHERE p.message_key = o.message_key AND p.status = 'pending' AND p.seq > o.seq) AS held
"""

_LIST = f"""
SELECT {_COLUMNS}
FROM outbox AS o
WHERE o.status = 'dead_lettered' AND o.seq > $1
ORDER BY o.seq
LIMIT $2
"""  # noqa: S608 - a constant column list

_REDRIVE = f"""
WITH redriven AS (
    UPDATE outbox SET
        status = 'pending',
        failures = 0,
        dead_letter_reason = NULL,
        first_failed_at = NULL,
        next_attempt_at = now(),
        redrives = redrives + 1
    WHERE event_id = $1 AND status = 'dead_lettered'
    RETURNING *
),
logged AS (
    INSERT INTO writeback_timeline (event_id, decision_id, event_type, stage, at, attempts,
                                    topic, actor)
    SELECT event_id, decision_id, event_type, 'redriven', now(), attempts, topic, $2
    FROM redriven
),
notified AS (
    SELECT pg_notify('scoregate_outbox', '') FROM redriven
)
SELECT {_COLUMNS}, (SELECT count(*) FROM notified) AS notified
FROM redriven AS o
"""  # noqa: S608 - a constant column list

_STATUS = "SELECT status FROM outbox WHERE event_id = $1"
_EVER_QUEUED = "SELECT 1 FROM writeback_timeline WHERE event_id = $1 LIMIT 1"

_STATS = """
SELECT
    (SELECT extract(epoch FROM clock_timestamp() - created_at)::float8
     FROM outbox WHERE status = 'pending' ORDER BY seq LIMIT 1) AS oldest_pending_s,
    (SELECT count(*) FROM outbox WHERE status = 'pending') AS pending,
    (SELECT count(*) FROM outbox WHERE status = 'dead_lettered') AS dead_lettered
"""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """The outbox at a glance, for metrics.

    Attributes:
        pending: Events not yet delivered (including those held behind a dead letter).
        oldest_pending_s: Age of the oldest pending event in seconds (0 when none).
        dead_lettered: Events in the dead-letter queue.
    """

    pending: int
    oldest_pending_s: float
    dead_lettered: int


def _dead_letter(row: asyncpg.Record) -> DeadLetter:
    return DeadLetter(
        event_id=str(row["event_id"]),
        decision_id=str(row["decision_id"]),
        type=row["event_type"],
        topic=row["topic"],
        key=row["message_key"],
        status=row["status"],
        reason=row["dead_letter_reason"],
        error_class=row["error_class"],
        error=row["last_error"],
        attempts=row["attempts"],
        first_failed_at=row["first_failed_at"],
        last_failed_at=row["last_failed_at"],
        created_at=row["created_at"],
        dead_lettered_at=row["dead_lettered_at"],
        dlq_topic=row["dlq_topic"],
        dlq_partition=row["dlq_partition"],
        dlq_offset=row["dlq_offset"],
        redrives=row["redrives"],
        held=row["held"],
    )


# Cursors are outbox sequence numbers, a bigint.
_MAX_SEQ = 2**63 - 1


def _parse_cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not (cursor.isascii() and cursor.isdigit()) or int(cursor) > _MAX_SEQ:
        raise BadDeadLetterCursor(f"bad cursor {cursor!r}")
    return int(cursor)


class DeadLetterQueue:
    """Dead-lettered outcome events, as kept in the outbox.

    Args:
        pool: The shared pool.
        config: The write-back settings.
    """

    def __init__(self, pool: asyncpg.Pool, config: WritebackConfig) -> None:
        self._pool = pool
        self._config = config

    async def list(self, limit: int = 50, cursor: str | None = None) -> DeadLetterPage:
        """Dead letters, oldest first.

        Args:
            limit: Page size.
            cursor: ``next_cursor`` of the previous page.

        Returns:
            One page; ``next_cursor`` is None on the last.

        Raises:
            BadDeadLetterCursor: The cursor is not one this method gave out.
            AuditUnavailable: PostgreSQL could not be reached.
        """
        after = _parse_cursor(cursor)
        try:
            rows = await self._pool.fetch(_LIST, after, limit + 1)
        except STORE_ERRORS as exc:
            raise AuditUnavailable("could not read the dead-letter queue", exc) from exc
        page = rows[:limit]
        next_cursor = str(page[-1]["seq"]) if len(rows) > limit else None
        return DeadLetterPage(items=[_dead_letter(row) for row in page], next_cursor=next_cursor)

    async def redrive(self, event_id: str, actor: str) -> DeadLetter | None:
        """Send a dead-lettered event again, under the same ``ce_id``.

        The event becomes pending at once and every relay is woken; later events of
        its key follow it once it is delivered.

        Args:
            event_id: The event's id (its ``ce_id``).
            actor: Who redrives it (kept in the timeline).

        Returns:
            The event as it stands now (``pending``), or None if there is no such event.

        Raises:
            NotDeadLettered: The event exists but is pending or delivered.
            AuditUnavailable: PostgreSQL could not be reached.
        """
        try:
            key = uuid.UUID(event_id)
        except ValueError:
            return None
        try:
            row = await self._pool.fetchrow(_REDRIVE, key, actor)
            if row is not None:
                return _dead_letter(row)
            status = await self._pool.fetchval(_STATUS, key)
            if status is None and await self._pool.fetchval(_EVER_QUEUED, key):
                # Only delivered rows are purged from the outbox.
                status = "delivered"
        except STORE_ERRORS as exc:
            raise AuditUnavailable("could not redrive the event", exc) from exc
        if status is None:
            return None
        raise NotDeadLettered(event_id, status)

    async def stats(self) -> OutboxStats:
        """Pending events, the age of the oldest, and the dead-letter depth.

        Raises:
            AuditUnavailable: PostgreSQL could not be reached.
        """
        try:
            row = await self._pool.fetchrow(_STATS)
        except STORE_ERRORS as exc:
            raise AuditUnavailable("could not read the outbox", exc) from exc
        assert row is not None  # an aggregate query always returns its row
        return OutboxStats(
            pending=row["pending"],
            oldest_pending_s=max(0.0, row["oldest_pending_s"] or 0.0),
            dead_lettered=row["dead_lettered"],
        )
