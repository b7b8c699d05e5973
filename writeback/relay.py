"""The outbox relay: moves committed outcome events from PostgreSQL to Kafka.

Each cycle claims, in one short transaction, the oldest due events that head their
key's queue (an event waits until every earlier event of its key is delivered),
marking them with a lease (``claimed_by``, ``claimed_until``). It then publishes
them as CloudEvents in binary mode with no transaction or connection held (renewing
the lease while a publish takes long), and records each outcome in a second short
transaction that touches only the rows it still holds. Several relays may run at
once: ``FOR UPDATE SKIP LOCKED`` and the leases split the work, and the
head-of-queue rule keeps each key's order across them and across failures. A relay
that dies mid-publish leaves its rows claimed until the lease runs out; then any
relay takes them again (the consumer dedupes the repeat on the CloudEvents id).

An event that cannot be published goes to the dead-letter topic with error headers
(see :class:`OutboxRelay`); an operator redrives it with
:class:`writeback.dead_letters.DeadLetterQueue`.

The relay wakes on ``NOTIFY scoregate_outbox`` (sent by every transaction that
queues an event) and polls as a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry.trace import StatusCode

from writeback import metrics
from writeback.audit_store import NOTIFY_CHANNEL
from writeback.config import WritebackConfig
from writeback.kafka import KafkaPublisher, OutgoingMessage, failure_kind, is_too_large
from writeback.pool import reconnect_if_read_only
from writeback.tracing import publish_span, trace_headers

logger = logging.getLogger(__name__)

_LAST_ERROR_MAX_CHARS = 2000
_STACKTRACE_MAX_CHARS = 8000
_LISTEN_PROBE_INTERVAL_S = 30.0
_LISTEN_PROBE_TIMEOUT_S = 5.0
# Beyond the publish calls' own bounds (the event, then its dead letter), a cycle's
# publishing gets this much before it gives its claims up.
_CYCLE_SLACK_S = 10.0

# One statement, so one short transaction: lock the claimable heads (skipping rows
# another relay is claiming right now), then lease them to this cycle.
_CLAIM = """
WITH claimable AS (
    SELECT o.seq
    FROM outbox AS o
    WHERE o.status = 'pending'
      AND o.next_attempt_at <= now()
      AND (o.claimed_until IS NULL OR o.claimed_until <= now())
      AND NOT EXISTS (
          SELECT 1 FROM outbox AS p
          WHERE p.message_key = o.message_key AND p.status <> 'delivered' AND p.seq < o.seq
      )
    ORDER BY o.seq
    LIMIT $1
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE outbox AS o
SET claimed_by = $2, claimed_until = now() + $3 * interval '1 millisecond'
FROM claimable AS c
WHERE o.seq = c.seq
RETURNING o.seq, o.event_id, o.decision_id, o.event_type, o.topic, o.message_key, o.payload,
          o.event_time, o.created_at, o.attempts, o.failures, o.error_class, o.last_error,
          o.first_failed_at, o.last_failed_at, o.dead_letter_reason, o.traceparent, o.subject
"""

# Keeps a cycle's claims its own while it publishes.
_RENEW = """
UPDATE outbox SET claimed_until = now() + $3 * interval '1 millisecond'
WHERE seq = ANY($1::bigint[]) AND claimed_by = $2
"""

# Gives up a cycle's claims that it could not see through, so they need not wait
# for the lease to run out.
_RELEASE = """
UPDATE outbox SET claimed_by = NULL, claimed_until = NULL
WHERE seq = ANY($1::bigint[]) AND claimed_by = $2
"""

# Records each claimed row's outcome, on the rows this cycle still holds (a row whose
# lease ran out and that another relay claimed is that relay's to record), releases
# them, appends published and dead-lettered events to the timeline, and returns each
# recorded row with the commit-to-publish delay of a delivered event (both ends on
# PostgreSQL's clock).
_RECORD_OUTCOMES = """
WITH u AS (
    SELECT * FROM unnest(
        $1::bigint[], $2::text[], $3::boolean[], $4::integer[], $5::bigint[], $6::text[],
        $7::text[], $8::timestamptz[], $9::integer[], $10::text[], $11::float8[],
        $12::integer[], $13::bigint[]
    ) AS u(seq, status, attempted, partition, record_offset, error, error_class, failed_at,
           failures, dead_letter_reason, backoff_ms, dlq_partition, dlq_offset)
),
updated AS (
    UPDATE outbox AS o SET
        status = u.status,
        attempts = o.attempts + u.attempted::integer,
        "partition" = COALESCE(u.partition, o."partition"),
        "offset" = COALESCE(u.record_offset, o."offset"),
        delivered_at = CASE
            WHEN u.status = 'delivered' THEN clock_timestamp() ELSE o.delivered_at END,
        failures = u.failures,
        last_error = COALESCE(u.error, o.last_error),
        error_class = COALESCE(u.error_class, o.error_class),
        first_failed_at = COALESCE(o.first_failed_at, u.failed_at),
        last_failed_at = COALESCE(u.failed_at, o.last_failed_at),
        dead_letter_reason = u.dead_letter_reason,
        dead_lettered_at = CASE
            WHEN u.status = 'dead_lettered' THEN clock_timestamp() ELSE o.dead_lettered_at END,
        dlq_topic = CASE WHEN u.status = 'dead_lettered' THEN $14 ELSE o.dlq_topic END,
        dlq_partition = COALESCE(u.dlq_partition, o.dlq_partition),
        dlq_offset = COALESCE(u.dlq_offset, o.dlq_offset),
        next_attempt_at = CASE
            WHEN u.status = 'pending' THEN now() + u.backoff_ms * interval '1 millisecond'
            ELSE o.next_attempt_at
        END,
        claimed_by = NULL,
        claimed_until = NULL
    FROM u
    WHERE o.seq = u.seq AND o.claimed_by = $16
    RETURNING o.seq, o.event_id, o.decision_id, o.event_type, o.status, o.attempts, o.topic,
              o."partition", o."offset", o.delivered_at, o.created_at, o.last_error,
              o.dlq_topic, o.dlq_partition, o.dlq_offset, o.dead_lettered_at
),
logged AS (
    INSERT INTO writeback_timeline (
        event_id, decision_id, event_type, stage, at, attempts, topic, "partition", "offset",
        error, actor
    )
    SELECT event_id, decision_id, event_type, 'published', delivered_at, attempts, topic,
           "partition", "offset", NULL, $15
    FROM updated WHERE status = 'delivered'
    UNION ALL
    SELECT event_id, decision_id, event_type, 'dead_lettered', dead_lettered_at, attempts,
           dlq_topic, dlq_partition, dlq_offset, last_error, $15
    FROM updated WHERE status = 'dead_lettered'
)
SELECT seq, CASE WHEN status = 'delivered'
    THEN extract(epoch FROM delivered_at - created_at)::float8 END AS delay
FROM updated
"""

_CONTENT_TYPE = b"application/json"
_SPEC_VERSION = b"1.0"
ERROR_HEADER_PREFIX = "scoregate.errors."
"""Prefix of the error headers on dead letters (Kafka Connect uses ``__connect.errors.``)."""
_STAGE = b"produce"
_RELAY_CLASS = f"{__name__}.OutboxRelay".encode()


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text[:_LAST_ERROR_MAX_CHARS]


def _class_name(error: BaseException) -> str:
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"


@dataclass(slots=True)
class _Outcome:
    """What became of one claimed row in this cycle."""

    row: asyncpg.Record
    failures: int
    dead_letter_reason: str | None
    status: str = "pending"
    attempted: bool = False
    partition: int | None = None
    offset: int | None = None
    error: BaseException | None = None
    failed_at: datetime | None = None
    backoff_ms: float = 0.0
    dlq_partition: int | None = None
    dlq_offset: int | None = None


class OutboxRelay:
    """Publishes outbox rows to Kafka, in order per key, until stopped.

    An event that fails in a way no retry can fix, or fails ``relay_max_attempts``
    times in a way a retry might, goes to the dead-letter topic with error headers
    and its row becomes ``dead_lettered``; later events of its key wait until it is
    redriven and delivered. If the dead-letter topic cannot take it either, the
    event stays pending and is tried there again.

    Args:
        pool: The shared pool (claims and outcome updates, one short statement each;
            no connection is held while publishing).
        publisher: The Kafka publisher; the relay starts it lazily but does not
            stop it (its owner does).
        config: Topics, batch size, poll interval, backoff and attempt limit.

    Attributes:
        published: Events acknowledged by Kafka so far.
        failed: Publish attempts that failed so far.
        dead_lettered: Events written to the dead-letter topic so far.
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
        self._topics_ready = False
        self._tasks: list[asyncio.Task[None]] = []
        # Host and process, and which relay of the process (tests run several).
        self._identity = f"relay@{socket.gethostname()}:{os.getpid()}/{uuid.uuid4().hex[:6]}"
        # Each cycle claims under a token of its own, so a late record of a cycle
        # whose lease ran out cannot touch rows claimed again since.
        self._cycles = itertools.count(1)
        self._unrecorded: tuple[str, Sequence[_Outcome]] | None = None
        self._lease_s = config.relay_lease_ms / 1000
        self._cycle_bound_s = 2 * config.publish_timeout_ms / 1000 + _CYCLE_SLACK_S
        self.published = 0
        self.failed = 0
        self.dead_lettered = 0

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
            # A cycle's publishing is bounded; allow it to record the outcome too.
            await asyncio.wait_for(relay, self._cycle_bound_s + _CYCLE_SLACK_S)
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

        The claim and the record are two short transactions; no transaction or
        connection is held while Kafka is waited on. Outcomes that could not be
        recorded are kept and recorded first by the next call.

        Returns:
            How many events were handled (published, dead-lettered or failed).

        Raises:
            asyncpg.PostgresError: PostgreSQL failed. Events published but not
                recorded stay claimed by this relay, which records them on its next
                call; if it stops first, they are claimable once the lease runs out.
            OSError: PostgreSQL could not be reached, or no pooled connection was
                free in time (``TimeoutError``).
            TimeoutError: Publishing took longer than two publish timeouts and
                some slack; the claims were given up.
        """
        if self._unrecorded is not None:
            await self._record(*self._unrecorded)
        token = f"{self._identity}#{next(self._cycles)}"
        claimed = await self._pool.fetch(
            _CLAIM, self._config.relay_batch_size, token, self._lease_s * 1000
        )
        if not claimed:
            return 0
        rows = sorted(claimed, key=lambda row: row["seq"])
        seqs = [row["seq"] for row in rows]
        renewal = asyncio.create_task(self._renew(seqs, token), name="outbox-relay-renew")
        try:
            async with asyncio.timeout(self._cycle_bound_s):
                outcomes = await self._deliver(rows)
        except TimeoutError:
            logger.warning("publishing %d events took too long; giving them up", len(rows))
            await self._pool.execute(_RELEASE, seqs, token)
            raise
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        self._unrecorded = (token, outcomes)
        await self._record(token, outcomes)
        return len(rows)

    async def _renew(self, seqs: list[int], token: str) -> None:
        # Most publishes end long before the first renewal is due.
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                await self._pool.execute(_RENEW, seqs, token, self._lease_s * 1000)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Should the lease run out, another relay may publish these events
                # again; this cycle's outcome then is not recorded over theirs.
                logger.warning("could not renew the claims of %d events: %r", len(seqs), exc)

    async def _record(self, token: str, outcomes: Sequence[_Outcome]) -> None:
        recorded = await self._pool.fetch(
            _RECORD_OUTCOMES,
            *self._outcome_columns(outcomes),
            self._config.dead_letter_topic,
            self._identity,
            token,
        )
        self._unrecorded = None
        for row in recorded:
            if row["delay"] is not None:
                metrics.COMMIT_TO_PUBLISH.observe(max(0.0, row["delay"]))
        if len(recorded) < len(outcomes):
            logger.warning(
                "%d of %d events outlived this relay's lease and were claimed again;"
                " their outcome is the new claimant's to record",
                len(outcomes) - len(recorded),
                len(outcomes),
            )

    async def _deliver(self, rows: Sequence[asyncpg.Record]) -> list[_Outcome]:
        outcomes = [
            _Outcome(
                row=row, failures=row["failures"], dead_letter_reason=row["dead_letter_reason"]
            )
            for row in rows
        ]
        now = datetime.now(UTC)
        unreachable = await self._ensure_topics()
        if unreachable is not None:
            logger.warning("Kafka unavailable, %d events wait: %r", len(rows), unreachable)
            for outcome in outcomes:
                outcome.attempted = outcome.dead_letter_reason is None
                self._failed(outcome, unreachable, now)
            for outcome in outcomes:
                outcome.backoff_ms = self._backoff_ms(outcome.row["attempts"])
            return outcomes
        await self._publish_events([o for o in outcomes if o.dead_letter_reason is None], now)
        bound = [o for o in outcomes if o.status == "pending" and o.dead_letter_reason]
        if bound:
            await self._publish_dead_letters(bound, now)
        for outcome in outcomes:
            if outcome.status == "pending":
                outcome.backoff_ms = self._backoff_ms(outcome.row["attempts"])
        failures = sum(1 for outcome in outcomes if outcome.status == "pending")
        if failures:
            logger.warning(
                "%d of %d events are not delivered yet; they will be retried",
                failures,
                len(outcomes),
            )
        return outcomes

    async def _ensure_topics(self) -> BaseException | None:
        """Create the outcome, dead-letter and alerts topics once per broker session.

        Returns:
            The error if the broker cannot be reached (every event then waits);
            None otherwise, also when creating a topic was refused, since it may
            exist already and publishing will tell.
        """
        if self._topics_ready:
            return None
        try:
            await self._publisher.ensure_started()
            topics = (self._config.topic, self._config.dead_letter_topic, self._config.alerts_topic)
            for topic in topics:
                await self._publisher.ensure_topic(topic, self._config.topic_partitions)
        except Exception as exc:
            if failure_kind(exc) == "transient":
                return exc
            logger.warning("could not create the topics (%r); publishing anyway", exc)
        self._topics_ready = True
        return None

    async def _publish_events(self, outcomes: list[_Outcome], now: datetime) -> None:
        if not outcomes:
            return
        started = time.perf_counter()
        with contextlib.ExitStack() as spans:
            opened = [
                spans.enter_context(
                    publish_span(o.row["topic"], str(o.row["event_id"]), o.row["traceparent"])
                )
                for o in outcomes
            ]
            messages = [
                self._message(o.row, trace_headers(span))
                for o, span in zip(outcomes, opened, strict=True)
            ]
            results = await self._publisher.publish(messages)
            for span, result in zip(opened, results, strict=True):
                if isinstance(result, BaseException):
                    span.set_status(StatusCode.ERROR, _describe(result))
                else:
                    span.set_attribute("messaging.kafka.offset", result.offset)
                    span.set_attribute("messaging.destination.partition.id", str(result.partition))
        metrics.PUBLISH_DURATION.observe(time.perf_counter() - started)
        for outcome, result in zip(outcomes, results, strict=True):
            outcome.attempted = True
            if isinstance(result, BaseException):
                self._failed(outcome, result, now)
            else:
                outcome.status = "delivered"
                outcome.partition = result.partition
                outcome.offset = result.offset
                self.published += 1
                metrics.EVENTS_PUBLISHED.inc()
        if all(isinstance(result, BaseException) for result in results):
            # Probably a broker outage; a broker that comes back may have lost the topics.
            self._topics_ready = False

    def _failed(self, outcome: _Outcome, error: BaseException, now: datetime) -> None:
        kind = failure_kind(error)
        self.failed += 1
        metrics.PUBLISH_FAILURES.labels(kind=kind).inc()
        outcome.error = error
        outcome.failed_at = now
        if kind == "non_retriable":
            outcome.dead_letter_reason = "non_retriable"
        elif kind == "counted":
            outcome.failures += 1
            if outcome.failures >= self._config.relay_max_attempts:
                outcome.dead_letter_reason = "attempts_exhausted"

    async def _publish_dead_letters(self, outcomes: list[_Outcome], now: datetime) -> None:
        messages = [self._dead_letter(o, now, with_value=True) for o in outcomes]
        results = await self._publisher.publish(messages)
        # A value the outcome topic refused as too large may not fit the dead-letter
        # topic either: send the rest; the value stays in the outbox for a redrive.
        too_large = [
            index
            for index, result in enumerate(results)
            if isinstance(result, BaseException) and is_too_large(result)
        ]
        if too_large:
            retried = await self._publisher.publish(
                [self._dead_letter(outcomes[i], now, with_value=False) for i in too_large]
            )
            for index, result in zip(too_large, retried, strict=True):
                results[index] = result
        for outcome, result in zip(outcomes, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning(
                    "dead-letter topic %s refused event %s (%r); it stays pending",
                    self._config.dead_letter_topic,
                    outcome.row["event_id"],
                    result,
                )
                continue
            outcome.status = "dead_lettered"
            outcome.dlq_partition = result.partition
            outcome.dlq_offset = result.offset
            self.dead_lettered += 1
            reason = outcome.dead_letter_reason or "non_retriable"
            metrics.EVENTS_DEAD_LETTERED.labels(reason=reason).inc()
            logger.error(
                "event %s dead-lettered to %s (%s): %s",
                outcome.row["event_id"],
                self._config.dead_letter_topic,
                reason,
                outcome.row["last_error"] if outcome.error is None else _describe(outcome.error),
            )

    def _cloudevent_headers(self, row: asyncpg.Record) -> list[tuple[str, bytes]]:
        return [
            ("ce_specversion", _SPEC_VERSION),
            ("ce_id", str(row["event_id"]).encode()),
            ("ce_type", row["event_type"].encode()),
            ("ce_source", self._config.event_source.encode()),
            ("ce_time", _rfc3339(row["event_time"]).encode()),
            # A decision event's subject is its decision; a freshness alert's its feature.
            ("ce_subject", (row["subject"] or str(row["decision_id"])).encode()),
            ("content-type", _CONTENT_TYPE),
        ]

    def _message(
        self, row: asyncpg.Record, trace: list[tuple[str, bytes]] | None = None
    ) -> OutgoingMessage:
        return OutgoingMessage(
            topic=row["topic"],
            key=row["message_key"].encode(),
            value=row["payload"],
            headers=self._cloudevent_headers(row) + (trace or []),
        )

    def _dead_letter(
        self, outcome: _Outcome, now: datetime, *, with_value: bool
    ) -> OutgoingMessage:
        """The event as it is, plus error headers carrying what Kafka Connect's do."""
        row = outcome.row
        error = outcome.error
        if error is not None:
            error_class = _class_name(error)
            message = str(error) or type(error).__name__
            stacktrace = "".join(traceback.format_exception(error))[:_STACKTRACE_MAX_CHARS]
        else:
            # Bound for this topic in an earlier cycle: the stored error is the cause.
            error_class = row["error_class"] or ""
            message = row["last_error"] or ""
            stacktrace = ""
        first = row["first_failed_at"] or outcome.failed_at or now
        last = outcome.failed_at or row["last_failed_at"] or now
        attempts = row["attempts"] + int(outcome.attempted)
        errors = {
            "topic": row["topic"],
            "outbox.seq": str(row["seq"]),
            "relay.id": self._identity,
            "stage": _STAGE.decode(),
            "class.name": _RELAY_CLASS.decode(),
            "exception.class.name": error_class,
            "exception.message": message[:_LAST_ERROR_MAX_CHARS],
            "exception.stacktrace": stacktrace,
            "reason": outcome.dead_letter_reason or "non_retriable",
            "attempts": str(attempts),
            "first.failure.time": _rfc3339(first),
            "last.failure.time": _rfc3339(last),
        }
        if not with_value:
            errors["value.omitted"] = "true"
        headers = self._cloudevent_headers(row)
        headers += [(ERROR_HEADER_PREFIX + name, value.encode()) for name, value in errors.items()]
        return OutgoingMessage(
            topic=self._config.dead_letter_topic,
            key=row["message_key"].encode(),
            value=row["payload"] if with_value else b"",
            headers=headers,
        )

    @staticmethod
    def _outcome_columns(outcomes: Sequence[_Outcome]) -> tuple[list[Any], ...]:
        """The parameters of the outcome update: one array per column."""
        columns: tuple[list[Any], ...] = tuple([] for _ in range(13))
        for outcome in outcomes:
            error = outcome.error
            values = (
                outcome.row["seq"],
                outcome.status,
                outcome.attempted,
                outcome.partition,
                outcome.offset,
                None if error is None else _describe(error),
                None if error is None else _class_name(error),
                outcome.failed_at,
                outcome.failures,
                outcome.dead_letter_reason,
                outcome.backoff_ms,
                outcome.dlq_partition,
                outcome.dlq_offset,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        return columns

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
        linger = self._config.relay_linger_ms / 1000
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
                await reconnect_if_read_only(self._pool, exc)
                await self._sleep(delay)
                continue
            failures = 0
            if handled:
                # The next event of each key handled may be due now (it waited for its
                # head): look again at once, not after a poll interval per event of a
                # busy key. Only a cycle that finds nothing waits.
                continue
            if self._listening:
                self._idle.set()
            await self._sleep(poll_interval)
            if linger:
                # Woken by a commit: let the commits right behind it join this cycle,
                # so a cycle's round trips are shared by many events, not paid by each.
                await asyncio.sleep(linger)

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
