"""The audit store: decision records and their outbox events, committed together.

Concurrent commits share transactions (group commit): one writer task drains a
queue, and while one transaction is in flight the next callers queue up and go
together in the next one. Each batch is a single statement, so it is one
transaction and one round trip however many decisions it carries.

The commit is also the idempotency check, so a new ``(caller, request_id)`` costs no
query before it: the statement claims each key (``ON CONFLICT DO NOTHING``) and writes
the record and its event only for the keys it claimed. A key claimed before, in an
earlier transaction, another process's concurrent one or earlier in the same batch,
writes nothing, fails none of its neighbours, and its caller gets the committed record
back from one more query (or :class:`RequestMismatch`). That query is not folded into
the statement: a row another transaction committed while the statement waited on its
key is outside the statement's snapshot, and ``DO UPDATE`` would return it only by
writing a new version of it on every retry.

A batch PostgreSQL refuses for one record's data (a NUL in a text column) is halved
until the record stands alone: its neighbours commit, it alone fails with
:class:`RecordRefused`. A record whose JSON holds a NUL is refused before it is
queued: the ``json`` column would take it, but every later read of the record with
PostgreSQL's JSON operators (decision search) would fail on it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from contracts.decisions import DecisionRecord, RollbackState, WritebackEntry, WritebackState
from contracts.events import DECISION_MADE, DECISION_ROLLED_BACK, DecisionMade, DecisionRolledBack
from writeback.config import WritebackConfig
from writeback.errors import STORE_ERRORS, unavailable_on_error

# Re-exported: callers import these errors from here.
from writeback.errors import AuditUnavailable as AuditUnavailable
from writeback.errors import RecordRefused as RecordRefused
from writeback.errors import RequestMismatch as RequestMismatch
from writeback.tracing import current_traceparent

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "scoregate_outbox"
"""The channel relays LISTEN on; every transaction that queues an event notifies it.

The statements below spell it out as a literal: they are constants, not templates.
"""

# Bound of a health ping.
_PING_TIMEOUT_S = 2.0

_encoder = msgspec.json.Encoder()

# Errors that mean "the server or the connection went away", not "this data is bad".
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
)
# Errors caused by one record of a batch; the others should not pay for it.
_RECORD_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
# msgspec writes a NUL in a string as this escape; found, the record is walked to be sure.
_NUL_ESCAPE = b"\\u0000"
_JSON_NUL = "it holds a NUL character, which PostgreSQL's JSON functions cannot read"

_COMMIT_BATCH = """
WITH incoming AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
        $8::timestamptz[], $9::json[], $10::uuid[], $11::text[], $12::bytea[], $15::text[],
        $16::bytea[]
    ) WITH ORDINALITY AS i(
        decision_id, caller, request_id, model_name, model_version, subject_entity,
        subject_id, decided_at, record, event_id, message_key, payload, traceparent,
        fingerprint, ord
    )
),
-- The first of each (caller, request_id) wins, in this batch and across batches.
claimed AS (
    INSERT INTO decision_requests (caller, request_id, decision_id, fingerprint)
    SELECT caller, request_id, decision_id, fingerprint FROM incoming ORDER BY ord
    ON CONFLICT (caller, request_id) DO NOTHING
    RETURNING decision_id, committed_at
),
inserted AS (
    INSERT INTO decisions (
        decision_id, caller, request_id, model_name, model_version, subject_entity,
        subject_id, decided_at, committed_at, record
    )
    SELECT i.decision_id, i.caller, i.request_id, i.model_name, i.model_version,
           i.subject_entity, i.subject_id, i.decided_at, c.committed_at, i.record
    FROM incoming AS i JOIN claimed AS c USING (decision_id)
    ORDER BY i.ord
    RETURNING decision_id, committed_at
),
queued AS (
    INSERT INTO outbox (
        event_id, decision_id, event_type, topic, message_key, payload, event_time, traceparent
    )
    SELECT i.event_id, i.decision_id, $13, $14, i.message_key, i.payload, i.decided_at,
           i.traceparent
    FROM incoming AS i JOIN inserted USING (decision_id)
    ORDER BY i.ord
    RETURNING decision_id, event_id, event_type, topic, created_at
),
logged AS (
    INSERT INTO writeback_timeline (event_id, decision_id, event_type, stage, at, topic)
    SELECT event_id, decision_id, event_type, 'committed', created_at, topic FROM queued
),
notified AS (
    SELECT pg_notify('scoregate_outbox', '') FROM (SELECT 1 FROM queued LIMIT 1) AS any_queued
)
SELECT q.decision_id, ins.committed_at, q.event_id, q.created_at
FROM queued AS q
JOIN inserted AS ins USING (decision_id)
LEFT JOIN notified ON true
"""


def _record_query(source: str, condition: str, columns: str = "") -> str:
    # `source`, `condition` and `columns` are constants below, never caller input.
    return f"""
SELECT d.record, d.committed_at,{columns}
       r.reason, r.rolled_back_by, r.rolled_back_at, r.event_id AS rollback_event_id,
       (SELECT jsonb_agg(jsonb_build_object(
                   'event_id', o.event_id, 'type', o.event_type, 'status', o.status,
                   'attempts', o.attempts, 'topic', o.topic, 'created_at', o.created_at,
                   'partition', o."partition", 'offset', o."offset",
                   'delivered_at', o.delivered_at, 'last_error', o.last_error,
                   'dead_lettered_at', o.dead_lettered_at, 'redrives', o.redrives)
               ORDER BY o.seq)
        FROM outbox AS o WHERE o.decision_id = d.decision_id) AS writeback,
       (SELECT jsonb_agg(jsonb_build_object(
                   'event_id', t.event_id, 'type', t.event_type, 'stage', t.stage,
                   'at', t.at, 'topic', t.topic, 'attempts', t.attempts,
                   'partition', t."partition", 'offset', t."offset", 'error', t.error,
                   'actor', t.actor)
               ORDER BY t.seq)
        FROM writeback_timeline AS t WHERE t.decision_id = d.decision_id) AS timeline
FROM {source}
LEFT JOIN rollbacks AS r ON r.decision_id = d.decision_id
WHERE {condition}
"""  # noqa: S608


_GET = _record_query("decisions AS d", "d.decision_id = $1")
_FIND_BY_REQUEST = _record_query(
    "decision_requests AS q JOIN decisions AS d"
    " ON d.decision_id = q.decision_id AND d.committed_at = q.committed_at",
    "q.caller = $1 AND q.request_id = $2",
    " q.fingerprint,",
)

_DECISION_FOR_ROLLBACK = """
SELECT d.record, o.message_key, o.topic
FROM decisions AS d
LEFT JOIN LATERAL (
    SELECT message_key, topic FROM outbox
    WHERE decision_id = d.decision_id AND event_type = $2
    ORDER BY seq LIMIT 1
) AS o ON true
WHERE d.decision_id = $1
"""

_INSERT_ROLLBACK = """
INSERT INTO rollbacks (decision_id, reason, rolled_back_by, rolled_back_at, event_id)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (decision_id) DO NOTHING
RETURNING decision_id, reason, rolled_back_by, rolled_back_at, event_id
"""

_FIRST_ROLLBACK = """
SELECT decision_id, reason, rolled_back_by, rolled_back_at, event_id
FROM rollbacks WHERE decision_id = $1
"""

_QUEUE_EVENT = """
WITH queued AS (
    INSERT INTO outbox (
        event_id, decision_id, event_type, topic, message_key, payload, event_time, traceparent
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    RETURNING event_id, decision_id, event_type, topic, created_at
)
INSERT INTO writeback_timeline (event_id, decision_id, event_type, stage, at, topic)
SELECT event_id, decision_id, event_type, 'committed', created_at, topic FROM queued
"""

_NOTIFY = "SELECT pg_notify('scoregate_outbox', '')"


@dataclass(slots=True)
class _PendingCommit:
    """One caller's decision, encoded, waiting for the writer."""

    record: DecisionRecord
    decision_id: uuid.UUID
    record_json: bytes
    event_id: uuid.UUID
    payload: bytes
    key: str
    # The committing request's trace context, for the relay's publish span.
    traceparent: str | None
    # What the request asked for, kept with its (caller, request_id).
    fingerprint: bytes | None
    # None: (caller, request_id) was already committed; the caller fetches that record.
    future: asyncio.Future[DecisionRecord | None]


def _nul_path(value: Any, path: str) -> str | None:
    """The path of the first string (or key) in ``value`` that holds a NUL, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items: Iterable[tuple[object, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        inner = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return inner
        found = _nul_path(item, inner)
        if found is not None:
            return found
    return None


def _unstorable_text(pending: _PendingCommit) -> str | None:
    """Which text column value of a record PostgreSQL cannot hold (a NUL), if any."""
    record = pending.record
    texts = (
        ("caller", record.caller),
        ("request_id", record.request_id),
        ("model.name", record.model.name),
        ("model.version", record.model.version),
        ("subject.entity", record.subject.entity),
        ("subject.id", record.subject.id),
        ("key", pending.key),
        ("traceparent", pending.traceparent or ""),
    )
    return next((field for field, text in texts if "\x00" in text), None)


def _rollback_state(row: asyncpg.Record) -> RollbackState:
    return RollbackState(
        decision_id=str(row["decision_id"]),
        reason=row["reason"],
        rolled_back_by=row["rolled_back_by"],
        rolled_back_at=row["rolled_back_at"],
        event_id=str(row["event_id"]),
    )


def _record_from_row(row: asyncpg.Record) -> DecisionRecord:
    record = msgspec.convert(row["record"], DecisionRecord)
    timeline = msgspec.convert(row["timeline"] or [], list[WritebackEntry])
    writeback = _writeback_states(
        msgspec.convert(row["writeback"] or [], list[WritebackState]), timeline
    )
    rollback = None
    if row["rolled_back_at"] is not None:
        rollback = RollbackState(
            decision_id=record.decision_id,
            reason=row["reason"],
            rolled_back_by=row["rolled_back_by"],
            rolled_back_at=row["rolled_back_at"],
            event_id=str(row["rollback_event_id"]),
        )
    return msgspec.structs.replace(
        record,
        status="made" if rollback is None else "rolled_back",
        committed_at=row["committed_at"],
        writeback=writeback,
        rollback=rollback,
        timeline=timeline,
    )


def _writeback_states(
    live: list[WritebackState], timeline: list[WritebackEntry]
) -> list[WritebackState]:
    """Each event's state: its outbox row while there is one, else from its history.

    Only delivered outbox rows are purged, so an event whose row is gone was
    delivered; its timeline says when and where.
    """
    by_event = {state.event_id: state for state in live}
    order: list[str] = []
    history: dict[str, list[WritebackEntry]] = {}
    for entry in timeline:
        if entry.event_id not in history:
            order.append(entry.event_id)
        history.setdefault(entry.event_id, []).append(entry)
    for state in live:
        if state.event_id not in history:
            order.append(state.event_id)
    return [
        by_event[event_id] if event_id in by_event else _state_from_history(history[event_id])
        for event_id in order
    ]


def _state_from_history(entries: list[WritebackEntry]) -> WritebackState:
    first = entries[0]
    published = next((e for e in reversed(entries) if e.stage == "published"), None)
    dead = next((e for e in reversed(entries) if e.stage == "dead_lettered"), None)
    return WritebackState(
        event_id=first.event_id,
        type=first.type,
        status="delivered" if published is not None else "pending",
        attempts=max(entry.attempts for entry in entries),
        topic=published.topic if published is not None else first.topic,
        created_at=first.at,
        partition=None if published is None else published.partition,
        offset=None if published is None else published.offset,
        delivered_at=None if published is None else published.at,
        last_error=None if dead is None else dead.error,
        dead_lettered_at=None if dead is None else dead.at,
        redrives=sum(1 for entry in entries if entry.stage == "redriven"),
    )


def _parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None


class AuditStore:
    """Decision records, their rollbacks and the outbox, in PostgreSQL.

    Args:
        pool: The pool from :func:`writeback.pool.create_pool`; the store does not
            close it.
        config: Topic and group-commit settings.

    Attributes:
        transactions: Group-commit transactions committed so far (each carries one
            or more decisions).
    """

    def __init__(self, pool: asyncpg.Pool, config: WritebackConfig) -> None:
        self._pool = pool
        self._config = config
        self._queue: asyncio.Queue[_PendingCommit | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.transactions = 0

    async def start(self) -> None:
        """Start the group-commit writer."""
        if self._writer is not None:
            return
        self._closing = False
        self._writer = asyncio.create_task(self._write_batches(), name="audit-group-commit")

    async def close(self) -> None:
        """Commit what is already queued, then stop the writer (the pool stays open)."""
        if self._writer is None:
            return
        self._closing = True
        self._queue.put_nowait(None)
        writer, self._writer = self._writer, None
        await writer

    async def commit(
        self,
        record: DecisionRecord,
        event: DecisionMade,
        key: str,
        fingerprint: bytes | None = None,
    ) -> DecisionRecord:
        """Commit a decision and its outcome event in one transaction.

        Returns only once the transaction is committed. If ``(caller, request_id)``
        was committed before, nothing is written and that first record comes back,
        provided it was committed for the same request.

        Args:
            record: The decision; its live fields (status, commit time, write-back,
                rollback) are not stored.
            event: The ``decision.made`` event to publish.
            key: The Kafka record key: the subject entity's id.
            fingerprint: What the request asked for, stored with its request id and
                compared with that of an earlier commit under the same id.

        Returns:
            The committed record with ``committed_at`` and its pending write-back
            state, or the earlier record of the same request.

        Raises:
            AuditUnavailable: The transaction failed; nothing of this decision is
                committed by it.
            RecordRefused: PostgreSQL cannot store a value of this record; nothing
                of it is written, and decisions committed beside it are not affected.
            RequestMismatch: The request id was committed before with another
                fingerprint; nothing is written.
            ValueError: ``record.decision_id`` is not a UUID.
        """
        if self._writer is None or self._closing:
            raise AuditUnavailable("the audit store is not running")
        stored = msgspec.structs.replace(
            record, status="made", committed_at=None, writeback=[], rollback=None, timeline=[]
        )
        record_json = _encoder.encode(stored)
        if _NUL_ESCAPE in record_json:
            # The escape may be a literal backslash's; only a real NUL is refused.
            field = _nul_path(msgspec.json.decode(record_json), "")
            if field is not None:
                raise RecordRefused(field, _JSON_NUL)
        pending = _PendingCommit(
            record=stored,
            decision_id=uuid.UUID(record.decision_id),
            record_json=record_json,
            event_id=uuid.uuid4(),
            payload=_encoder.encode(event),
            key=key,
            traceparent=current_traceparent(),
            fingerprint=fingerprint,
            future=asyncio.get_running_loop().create_future(),
        )
        self._queue.put_nowait(pending)
        committed = await pending.future
        if committed is not None:
            return committed
        existing = await self.find_by_request(record.caller, record.request_id, fingerprint)
        if existing is None:
            raise AuditUnavailable("the request was committed before but its record is gone")
        return existing

    async def find_by_request(
        self, caller: str, request_id: str, fingerprint: bytes | None = None
    ) -> DecisionRecord | None:
        """The decision a caller made under a request id, with its live state.

        Args:
            caller: The caller (API key name) that asked for the decision.
            request_id: The caller's request id.
            fingerprint: What the request asks for; given, a decision committed
                under the id with another fingerprint is refused.

        Returns:
            The record as :meth:`get` returns it, or None.

        Raises:
            AuditUnavailable: PostgreSQL could not be reached.
            RequestMismatch: The decision under the id was made for another request.
        """
        with unavailable_on_error("read the decision"):
            row = await self._pool.fetchrow(_FIND_BY_REQUEST, caller, request_id)
        if row is None:
            return None
        record = _record_from_row(row)
        stored = row["fingerprint"]
        # Keys from before fingerprints were kept have none: nothing to compare.
        if fingerprint is not None and stored is not None and bytes(stored) != fingerprint:
            raise RequestMismatch(record)
        return record

    async def get(self, decision_id: str) -> DecisionRecord | None:
        """A decision record with its live state filled in.

        ``committed_at`` comes from the row, ``status`` and ``rollback`` from the
        rollback row if any, ``writeback`` from the decision's outbox rows (or, once
        they are purged, from its timeline), ``timeline`` from the write-back history.

        Args:
            decision_id: The decision's UUID.

        Returns:
            The record, or None if there is none (or the id is not a UUID).
        """
        key = _parse_uuid(decision_id)
        if key is None:
            return None
        with unavailable_on_error("read the decision"):
            row = await self._pool.fetchrow(_GET, key)
        return None if row is None else _record_from_row(row)

    async def rollback(
        self, decision_id: str, reason: str, actor: str
    ) -> tuple[RollbackState, bool] | None:
        """Roll a decision back and queue its compensating event, in one transaction.

        Rolling back twice (also concurrently) writes one rollback and one event;
        the later calls get the first rollback back.

        Args:
            decision_id: The decision's UUID.
            reason: Why it is rolled back.
            actor: Who rolls it back.

        Returns:
            ``(state, created)``: the rollback, and False if it existed already;
            None if the decision is unknown.

        Raises:
            AuditUnavailable: PostgreSQL could not be reached or the transaction failed.
        """
        key = _parse_uuid(decision_id)
        if key is None:
            return None
        with unavailable_on_error("roll the decision back"):
            async with self._pool.acquire() as conn:
                return await self._rollback(conn, key, reason, actor)

    async def _rollback(
        self, conn: asyncpg.pool.PoolConnectionProxy, key: uuid.UUID, reason: str, actor: str
    ) -> tuple[RollbackState, bool] | None:
        # The record never changes after its commit, so it is safe to read it first.
        found = await conn.fetchrow(_DECISION_FOR_ROLLBACK, key, DECISION_MADE)
        if found is None:
            return None
        record = msgspec.convert(found["record"], DecisionRecord)
        now = datetime.now(UTC)
        event_id = uuid.uuid4()
        async with conn.transaction():
            row = await conn.fetchrow(_INSERT_ROLLBACK, key, reason, actor, now, event_id)
            if row is None:
                # A concurrent rollback holds the key until it commits; this statement
                # runs after that, so it sees the first rollback.
                first = await conn.fetchrow(_FIRST_ROLLBACK, key)
                if first is None:
                    raise AuditUnavailable("the rollback conflicted but no rollback row exists")
                return _rollback_state(first), False
            event = DecisionRolledBack(
                decision_id=record.decision_id,
                request_id=record.request_id,
                model=record.model,
                subject=record.subject,
                reason=reason,
                rolled_back_by=actor,
                rolled_back_at=now,
            )
            await conn.execute(
                _QUEUE_EVENT,
                event_id,
                key,
                DECISION_ROLLED_BACK,
                found["topic"] or self._config.topic,
                found["message_key"] or record.subject.id,
                _encoder.encode(event),
                now,
                current_traceparent(),
            )
            await conn.execute(_NOTIFY)
        return _rollback_state(row), True

    async def ping(self) -> None:
        """Check that PostgreSQL answers within two seconds.

        Raises:
            AuditUnavailable: It does not.
        """
        with unavailable_on_error("reach PostgreSQL"):
            async with asyncio.timeout(_PING_TIMEOUT_S):
                await self._pool.fetchval("SELECT 1")

    async def _write_batches(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            closing = False
            while len(batch) < self._config.commit_max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            # Callers that gave up (cancelled) before their turn need no write.
            live = [pending for pending in batch if not pending.future.done()]
            if live:
                try:
                    await self._commit_batch(live)
                except Exception as exc:  # the writer must outlive any one batch
                    logger.exception("group commit failed unexpectedly")
                    _fail(live, exc)
            if closing:
                return

    async def _commit_batch(self, batch: list[_PendingCommit]) -> None:
        try:
            rows = await self._execute_batch(batch)
        except _RECORD_ERRORS as exc:
            if len(batch) == 1:
                _refuse(batch[0], exc)
                return
            # One bad record must not fail its neighbours: halve the batch until it
            # stands alone, so the good halves still commit together (about 2*log2(n)
            # transactions for one bad record of n, not n).
            logger.warning("group commit of %d rejected (%r); halving it", len(batch), exc)
            middle = len(batch) // 2
            await self._commit_batch(batch[:middle])
            await self._commit_batch(batch[middle:])
            return
        except STORE_ERRORS as exc:
            logger.warning("group commit of %d decisions failed: %r", len(batch), exc)
            _fail(batch, exc)
            return
        self.transactions += 1
        committed = {row["decision_id"]: row for row in rows}
        for pending in batch:
            if pending.future.done():
                continue
            row = committed.get(pending.decision_id)
            pending.future.set_result(None if row is None else self._committed(pending, row))

    async def _execute_batch(self, batch: list[_PendingCommit]) -> list[asyncpg.Record]:
        try:
            return await self._send_batch(batch)
        except _CONNECTION_ERRORS as exc:
            if isinstance(exc, TimeoutError):
                # A hung server: waiting as long again would only delay the callers.
                raise
            # A pooled connection may be stale after a server restart. Resending is
            # safe even if the first try committed: (caller, request_id) conflicts
            # then, and the callers get the committed records back.
            logger.info("group commit lost its connection (%r); retrying once", exc)
            return await self._send_batch(batch)

    async def _send_batch(self, batch: list[_PendingCommit]) -> list[asyncpg.Record]:
        records = [pending.record for pending in batch]
        bound_s = self._config.commit_timeout_ms / 1000
        async with asyncio.timeout(bound_s), self._pool.acquire(timeout=bound_s) as conn:
            return await conn.fetch(
                _COMMIT_BATCH,
                [pending.decision_id for pending in batch],
                [record.caller for record in records],
                [record.request_id for record in records],
                [record.model.name for record in records],
                [record.model.version for record in records],
                [record.subject.entity for record in records],
                [record.subject.id for record in records],
                [record.decided_at for record in records],
                [pending.record_json for pending in batch],
                [pending.event_id for pending in batch],
                [pending.key for pending in batch],
                [pending.payload for pending in batch],
                DECISION_MADE,
                self._config.topic,
                [pending.traceparent for pending in batch],
                [pending.fingerprint for pending in batch],
            )

    def _committed(self, pending: _PendingCommit, row: asyncpg.Record) -> DecisionRecord:
        state = WritebackState(
            event_id=str(row["event_id"]),
            type=DECISION_MADE,
            status="pending",
            attempts=0,
            topic=self._config.topic,
            created_at=row["created_at"],
        )
        committed = WritebackEntry(
            event_id=state.event_id,
            type=DECISION_MADE,
            stage="committed",
            at=state.created_at,
            topic=state.topic,
        )
        return msgspec.structs.replace(
            pending.record,
            committed_at=row["committed_at"],
            writeback=[state],
            timeline=[committed],
        )


def _refuse(pending: _PendingCommit, cause: BaseException) -> None:
    """Fail one record PostgreSQL refused: its data (DataError) is the record's fault."""
    if pending.future.done():
        return
    if isinstance(cause, asyncpg.DataError):
        refused = RecordRefused(_unstorable_text(pending), str(cause), cause)
        pending.future.set_exception(refused)
    else:
        pending.future.set_exception(AuditUnavailable("could not commit the decision", cause))


def _fail(batch: list[_PendingCommit], cause: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(AuditUnavailable("could not commit the decision", cause))
