"""The outbox relay: moves committed outcome events from PostgreSQL to Kafka.

Each cycle claims, in one transaction, the oldest due events that head their key's
queue (an event waits until every earlier event of its key is delivered), publishes
them as CloudEvents in binary mode, and records each outcome before committing.
Several relays may run at once: ``FOR UPDATE SKIP LOCKED`` splits the work and the
head-of-queue rule keeps each key's order across them and across failures.

The relay wakes on ``NOTIFY scoregate_outbox`` (sent by every transaction that
queues an event) and polls as a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from writeback.audit_store import NOTIFY_CHANNEL
from writeback.config import WritebackConfig
from writeback.kafka import KafkaPublisher, OutgoingMessage

logger = logging.getLogger(__name__)

_LAST_ERROR_MAX_CHARS = 2000
_LISTEN_PROBE_INTERVAL_S = 30.0
_LISTEN_PROBE_TIMEOUT_S = 5.0

_CLAIM = """
SELECT o.seq, o.event_id, o.decision_id, o.event_type, o.topic, o.message_key, o.payload,
       o.event_time, o.attempts
FROM outbox AS o
WHERE o.status = 'pending'
  AND o.next_attempt_at <= now()
  AND NOT EXISTS (
      SELECT 1 FROM outbox AS p
      WHERE p.message_key = o.message_key AND p.status <> 'delivered' AND p.seq < o.seq
  )
ORDER BY o.seq
LIMIT $1
FOR UPDATE OF o SKIP LOCKED
"""

_RECORD_OUTCOMES = """
UPDATE outbox AS o SET
    status = CASE WHEN u.delivered THEN 'delivered' ELSE o.status END,
    "partition" = COALESCE(u.partition, o."partition"),
    "offset" = COALESCE(u.record_offset, o."offset"),
    delivered_at = CASE WHEN u.delivered THEN now() ELSE o.delivered_at END,
    attempts = o.attempts + 1,
    last_error = COALESCE(u.error, o.last_error),
    next_attempt_at = CASE
        WHEN u.delivered THEN o.next_attempt_at
        ELSE now() + u.backoff_ms * interval '1 millisecond'
    END
FROM unnest($1::bigint[], $2::boolean[], $3::integer[], $4::bigint[], $5::text[], $6::float8[])
    AS u(seq, delivered, partition, record_offset, error, backoff_ms)
WHERE o.seq = u.seq
"""

_CONTENT_TYPE = b"application/json"
_SPEC_VERSION = b"1.0"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text[:_LAST_ERROR_MAX_CHARS]


class OutboxRelay:
    """Publishes outbox rows to Kafka, in order per key, until stopped.

    Args:
        pool: The shared pool (claims and outcome updates).
        publisher: The Kafka publisher; the relay starts it lazily but does not
            stop it (its owner does).
        config: Topic, batch size, poll interval and backoff.

    Attributes:
        published: Events acknowledged by Kafka so far.
        failed: Publish attempts that failed so far.
    """

    def __init__(
        self, pool: asyncpg.Pool, publisher: KafkaPublisher, config: WritebackConfig
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._config = config
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._listening = False
        self._stopping = False
        self._topic_ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        self.failed = 0

    @property
    def running(self) -> bool:
        """Whether the background relay and its listener are alive."""
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    async def start(self) -> None:
        """Start relaying in the background (returns at once, even if PG or Kafka is down)."""
        if self._tasks:
            return
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._relay_forever(), name="outbox-relay"),
            asyncio.create_task(self._listen_forever(), name="outbox-relay-listen"),
        ]

    async def stop(self) -> None:
        """Finish the cycle in progress, then stop."""
        if not self._tasks:
            return
        self._stopping = True
        self._wake.set()
        relay, listener = self._tasks
        self._tasks = []
        listener.cancel()
        try:
            # A cycle is bounded by the publish timeout; allow it to record its outcome.
            await asyncio.wait_for(relay, self._config.publish_timeout_ms / 1000 + 10)
        except TimeoutError:
            logger.warning("outbox relay did not stop in time; cancelled")
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        self._idle.clear()

    async def wait_idle(self) -> None:
        """Wait until the relay has handled what it could claim and listens for commits."""
        await self._idle.wait()

    async def run_once(self) -> int:
        """Claim, publish and record one batch of due events.

        Returns:
            How many events were handled (published or failed).

        Raises:
            asyncpg.PostgresError: PostgreSQL failed (nothing is recorded; the
                events stay claimable).
            OSError: PostgreSQL could not be reached.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, self._config.relay_batch_size)
            if not rows:
                return 0
            outcomes = await self._publish(rows)
            await conn.execute(_RECORD_OUTCOMES, *self._outcome_columns(rows, outcomes))
        return len(rows)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> list[Any]:
        try:
            await self._publisher.ensure_started()
            if not self._topic_ready:
                await self._publisher.ensure_topic(
                    self._config.topic, self._config.topic_partitions
                )
                self._topic_ready = True
        except Exception as exc:
            logger.warning("Kafka unavailable, %d events wait: %r", len(rows), exc)
            return [exc] * len(rows)
        outcomes = await self._publisher.publish([self._message(row) for row in rows])
        if all(isinstance(outcome, BaseException) for outcome in outcomes):
            # Probably a broker outage; a broker that comes back may have lost the topic.
            self._topic_ready = False
        return outcomes

    def _message(self, row: asyncpg.Record) -> OutgoingMessage:
        return OutgoingMessage(
            topic=row["topic"],
            key=row["message_key"].encode(),
            value=row["payload"],
            headers=[
                ("ce_specversion", _SPEC_VERSION),
                ("ce_id", str(row["event_id"]).encode()),
                ("ce_type", row["event_type"].encode()),
                ("ce_source", self._config.event_source.encode()),
                ("ce_time", _rfc3339(row["event_time"]).encode()),
                ("ce_subject", str(row["decision_id"]).encode()),
                ("content-type", _CONTENT_TYPE),
            ],
        )

    def _outcome_columns(
        self, rows: Sequence[asyncpg.Record], outcomes: Sequence[Any]
    ) -> tuple[list[Any], ...]:
        """The parameters of the outcome update: one array per column."""
        seqs: list[int] = []
        delivered: list[bool] = []
        partitions: list[int | None] = []
        offsets: list[int | None] = []
        errors: list[str | None] = []
        backoffs: list[float] = []
        for row, outcome in zip(rows, outcomes, strict=True):
            seqs.append(row["seq"])
            if isinstance(outcome, BaseException):
                self.failed += 1
                delivered.append(False)
                partitions.append(None)
                offsets.append(None)
                errors.append(_describe(outcome))
                backoffs.append(self._backoff_ms(row["attempts"]))
            else:
                self.published += 1
                delivered.append(True)
                partitions.append(outcome.partition)
                offsets.append(outcome.offset)
                errors.append(None)
                backoffs.append(0.0)
        failures = len(rows) - delivered.count(True)
        if failures:
            logger.warning(
                "%d of %d events failed to publish; they will be retried", failures, len(rows)
            )
        return seqs, delivered, partitions, offsets, errors, backoffs

    def _backoff_ms(self, attempts: int) -> float:
        # Capped exponential backoff with "equal jitter": at least half the delay,
        # so retries spread out without ever coming back immediately.
        ceiling = min(
            float(self._config.relay_max_backoff_ms),
            self._config.relay_backoff_ms * 2.0 ** min(attempts, 32),
        )
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - not cryptographic

    async def _relay_forever(self) -> None:
        poll_interval = self._config.relay_poll_interval_ms / 1000
        failures = 0
        while not self._stopping:
            self._idle.clear()
            self._wake.clear()
            try:
                handled = await self.run_once()
            except Exception as exc:
                failures += 1
                delay = self._backoff_ms(failures) / 1000
                logger.warning("outbox relay cycle failed (%r); retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                continue
            failures = 0
            if handled >= self._config.relay_batch_size:
                continue
            if self._listening:
                self._idle.set()
            await self._sleep(poll_interval)

    async def _sleep(self, seconds: float) -> None:
        # Cut short by a notification, a new listener connection or stop().
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _listen_forever(self) -> None:
        failures = 0
        while True:
            try:
                conn = await asyncpg.connect(self._config.database_url, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                failures += 1
                delay = self._backoff_ms(failures) / 1000
                logger.warning(
                    "cannot LISTEN for outbox commits (%r); retrying in %.1fs", exc, delay
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            try:
                await self._listen(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # TimeoutError (an OSError) lands here too: the probe went unanswered.
                logger.warning("LISTEN connection failed (%r); reconnecting", exc)
            finally:
                self._listening = False
                self._idle.clear()
                await self._close_quietly(conn)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self._listening = True
        # Commits made before LISTEN took effect sent no notification we could see.
        self._wake.set()
        while not closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), _LISTEN_PROBE_INTERVAL_S)
                break
            # A vanished peer may never close the socket: ask the server now and then.
            async with asyncio.timeout(_LISTEN_PROBE_TIMEOUT_S):
                await conn.fetchval("SELECT 1")
        logger.warning("LISTEN connection closed; reconnecting")

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    @staticmethod
    async def _close_quietly(conn: asyncpg.Connection) -> None:
        try:
            await asyncio.wait_for(conn.close(), 2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            conn.terminate()
