"""The ingest worker: Kafka records in, the online store's compare-and-set out.

Each worker is a member of one consumer group over the topics the registry's streams
name, so several processes share the partitions and a rebalance moves them. A batch
is decoded record by record; the values go to Redis in one pipeline (one atomic
compare-and-set per entity and record), records that fail their contract go to
``<topic>.dlq``, and only then are the batch's offsets committed. A crash anywhere
before the commit redelivers the batch, and the compare-and-set makes the second
write a duplicate: the state is the same. A revoked partition's batch is finished
and committed before the partition goes (the rebalance listener waits for it), and so
is the batch in hand when the worker is told to stop.

What the worker knows about freshness (each written value's ingest lag, the newest
event times, its partitions' consumer lag, schema changes) it also shares with every
other process through Redis (:class:`~gateway.freshness.signals.IngestSignals`),
flushed from its loop about once a second and once more when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError
from aiokafka.structs import ConsumerRecord
from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_when_event_set,
    wait_exponential_jitter,
)

from contracts.registry import Stream
from gateway.deadline import Deadline
from gateway.features.online_store import (
    EntityWrite,
    OnlineStore,
    StoredValue,
    StoreUnavailable,
    lineage_id_for,
    to_millis,
)
from gateway.freshness.signals import IngestSignals
from gateway.ingest import metrics
from gateway.ingest.controls import IngestControls
from gateway.ingest.decoding import StreamDecoder
from gateway.ingest.records import SCHEMA_CHANGE_KINDS, FeatureChange, RawRecord, RecordRejected
from gateway.observability import SCHEMA_CHANGES
from gateway.registry import Registry, load_registry
from gateway.settings import env_int
from writeback import ERROR_HEADER_PREFIX, KafkaPublisher, OutgoingMessage, WritebackConfig

log = logging.getLogger(__name__)

_CLASS_NAME = "gateway.ingest.worker.IngestWorker"
_EXTRA_FIELDS_REMEMBERED = 256
"""Unmapped fields remembered per stream to count each once; past it, they are not."""
_CONTROL_INTERVAL_S = 1.0
"""How often the worker reads which topics operators paused."""
_POSITION_WAIT_S = 0.05
"""How long measuring a partition's lag waits for its position (known but after a
rebalance): the loop does not stall for it, the next flush measures again."""


class IngestSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What an ingest worker needs to start.

    Attributes:
        registry_path: the registry TOML file (``SCOREGATE_REGISTRY``).
        redis_url: the online store (``SCOREGATE_REDIS_URL``).
        redis_prefix: prefix of every online-store key (``SCOREGATE_REDIS_PREFIX``).
        kafka: the broker and the producer's settings, as the relay reads them.
        group_id: the consumer group the workers share (``SCOREGATE_INGEST_GROUP``).
        batch_size: records taken per batch at most (``SCOREGATE_INGEST_BATCH``).
        poll_timeout_ms: how long a poll waits for records when none are there.
        fetch_wait_ms: how long the broker may hold a fetch that finds no new records
            (``SCOREGATE_INGEST_FETCH_WAIT_MS``). Apache Kafka answers a held fetch as
            soon as records arrive, so there it only bounds idle fetching; a broker that
            holds the fetch for the whole wait (Tansu) adds up to this much to the
            freshness of every value.
        redis_max_connections: connections to Redis at most.
        metrics_port: where ``/metrics`` is served (``SCOREGATE_INGEST_METRICS_PORT``;
            0 serves none).
        signals_interval_s: how often the freshness signals are flushed to Redis at
            most.
    """

    registry_path: Path
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sg"
    kafka: WritebackConfig
    group_id: str = "scoregate-ingest"
    batch_size: int = 2000
    poll_timeout_ms: int = 200
    fetch_wait_ms: int = 20
    redis_max_connections: int = 8
    metrics_port: int = 0
    signals_interval_s: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IngestSettings:
        """Read the settings from ``SCOREGATE_*`` variables, with local defaults."""
        registry = env.get("SCOREGATE_REGISTRY")
        if not registry:
            raise SystemExit("SCOREGATE_REGISTRY must name the registry file")
        return cls(
            registry_path=Path(registry),
            redis_url=env.get("SCOREGATE_REDIS_URL", "redis://127.0.0.1:6379/0"),
            redis_prefix=env.get("SCOREGATE_REDIS_PREFIX", "sg"),
            kafka=WritebackConfig.from_env(env),
            group_id=env.get("SCOREGATE_INGEST_GROUP", "scoregate-ingest"),
            batch_size=env_int(env, "SCOREGATE_INGEST_BATCH", 2000),
            fetch_wait_ms=env_int(env, "SCOREGATE_INGEST_FETCH_WAIT_MS", 20),
            metrics_port=env_int(env, "SCOREGATE_INGEST_METRICS_PORT", 0, allow_zero=True),
        )


@dataclass(frozen=True, slots=True)
class Replay:
    """Where to start reading instead of the group's committed offsets.

    Attributes:
        from_time: start every partition at the first record at or after this time.
        offsets: start these partitions at these offsets.
    """

    from_time: datetime | None = None
    offsets: Mapping[TopicPartition, int] | None = None


class BatchReport(msgspec.Struct, kw_only=True):
    """What one batch did: records, values by outcome, dead letters."""

    records: int = 0
    written: int = 0
    older: int = 0
    duplicate: int = 0
    dead_lettered: int = 0


class IngestWorker:
    """One member of the ingest consumer group.

    Args:
        settings: the worker's settings.
        registry: the loaded registry (read from ``settings.registry_path`` if None).
        replay: where to start instead of the committed offsets, once per partition.
    """

    def __init__(
        self,
        settings: IngestSettings,
        registry: Registry | None = None,
        replay: Replay | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry or load_registry(settings.registry_path)
        streams = self._registry.file.streams
        if not streams:
            raise SystemExit("the registry names no streams: there is nothing to ingest")
        self._streams: dict[str, Stream] = {s.topic: s for s in streams}
        self._decoders = {s.topic: StreamDecoder(s, self._registry) for s in streams}
        self.store = OnlineStore.from_url(
            settings.redis_url,
            settings.redis_prefix,
            self._registry.file.online_store,
            max_connections=settings.redis_max_connections,
        )
        self._publisher = KafkaPublisher(settings.kafka)
        self._redis = aioredis.Redis.from_url(settings.redis_url)
        self.controls = IngestControls(self._redis, settings.redis_prefix)
        self.signals = IngestSignals(
            self._redis,
            settings.redis_prefix,
            self._registry.features,
            streams,
            flush_interval_s=settings.signals_interval_s,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._replay = replay
        self._replayed: set[TopicPartition] = set()
        self._batch = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._extra_seen: dict[str, set[str]] = {}
        self._paused: set[str] = set()
        self._control_checked = 0.0
        self._metrics = metrics.IngestSeries()
        self.report = BatchReport()

    @property
    def registry(self) -> Registry:
        """The registry the worker decodes against."""
        return self._registry

    @property
    def topics(self) -> list[str]:
        """The topics this worker reads."""
        return list(self._streams)

    async def start(self) -> None:
        """Connect to Redis and join the consumer group."""
        await self.store.open()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka.kafka_bootstrap,
            group_id=self._settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._settings.batch_size,
            fetch_max_wait_ms=self._settings.fetch_wait_ms,
            client_id="scoregate-ingest",
        )
        await consumer.start()
        consumer.subscribe(self.topics, listener=_Rebalance(self))
        self._consumer = consumer

    async def run(self, stop: asyncio.Event) -> None:
        """Take batches until ``stop`` is set; the batch in hand is finished first."""
        consumer = self._require_consumer()
        while not stop.is_set():
            await self._follow_controls()
            batches = await consumer.getmany(timeout_ms=self._settings.poll_timeout_ms)
            if batches:
                async with self._batch:
                    await self._process(batches)
            await self._flush_signals()
        self._stopping.set()

    async def stop(self) -> None:
        """Flush the freshness signals, leave the group and close the connections."""
        self._stopping.set()
        await self.signals.flush()
        if self._consumer is not None:
            await self._consumer.stop()
        await self._publisher.stop()
        await self.store.close()
        await self._redis.aclose()

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("the ingest worker is not started")
        return self._consumer

    async def _process(self, batches: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> None:
        """Decode, write, dead-letter and commit one batch, in that order."""
        now_ms = to_millis(datetime.now(UTC))
        writes: list[EntityWrite] = []
        changes: list[tuple[Stream, FeatureChange]] = []
        dead: list[OutgoingMessage] = []
        for tp, records in batches.items():
            stream = self._streams[tp.topic]
            decoder = self._decoders[tp.topic]
            for record in records:
                raw = _raw(record)
                try:
                    decoded = decoder.decode(raw)
                except RecordRejected as exc:
                    dead.append(self._dead_letter(stream, raw, exc))
                    continue
                self._note_extra_fields(stream, decoded.extra_fields)
                for change in decoded.changes:
                    writes.append(entity_write(change, now_ms))
                    changes.append((stream, change))
        outcomes = await self._retrying(lambda: self.store.write_many(writes, Deadline(30)))
        if dead:
            await self._retrying(lambda: self._publish(dead))
        offsets = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
        await self._require_consumer().commit(offsets)
        self._observe(changes, outcomes, now_ms, offsets)
        self.report.records += sum(len(records) for records in batches.values())

    async def _retrying(self, attempt: Any) -> Any:
        """Run ``attempt`` until it succeeds; a stop request ends the waiting."""
        async for attempt_state in AsyncRetrying(
            retry=retry_if_exception_type((StoreUnavailable, _NotDelivered)),
            wait=wait_exponential_jitter(multiplier=0.05, max=5.0, jitter=0.05),
            stop=stop_when_event_set(self._stopping),  # type: ignore[arg-type]
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        ):
            with attempt_state:
                return await attempt()
        return None

    async def _publish(self, messages: Sequence[OutgoingMessage]) -> None:
        outcomes = await self._publisher.publish(messages)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            raise _NotDelivered(f"{len(failures)} dead letters were not acknowledged") from (
                failures[0]
            )

    def _dead_letter(self, stream: Stream, raw: RawRecord, exc: RecordRejected) -> OutgoingMessage:
        """The record as it came, plus error headers in the write-back DLQ's conventions."""
        metrics.DEAD_LETTERS.labels(source=stream.name, reason=exc.kind).inc()
        self.report.dead_lettered += 1
        if exc.kind in SCHEMA_CHANGE_KINDS:
            feature = exc.feature if exc.feature in self._registry.features else ""
            SCHEMA_CHANGES.labels(source=stream.name, feature=feature, kind=exc.kind).inc()
            self.signals.schema_change(stream.name, feature, exc.kind, exc.detail, _now_ms())
            owner = self._owner(stream, feature)
            log.warning(
                "schema change on %s (%s), owner %s: %s; the record went to %s.dlq",
                stream.name,
                raw.topic,
                owner or "not named",
                exc.detail,
                raw.topic,
            )
        errors = {
            "topic": raw.topic,
            "partition": str(raw.partition),
            "offset": str(raw.offset),
            "stream": stream.name,
            "stage": "ingest",
            "class.name": _CLASS_NAME,
            "exception.class.name": f"{RecordRejected.__module__}.{RecordRejected.__name__}",
            "exception.message": exc.detail[:2000],
            "exception.stacktrace": "".join(traceback.format_exception_only(exc))[:2000],
            "reason": exc.kind,
            "failure.time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        if exc.feature:
            errors["feature"] = exc.feature
        headers = list(raw.headers)
        headers += [(ERROR_HEADER_PREFIX + name, value.encode()) for name, value in errors.items()]
        return OutgoingMessage(
            topic=f"{raw.topic}.dlq", key=raw.key or b"", value=raw.value or b"", headers=headers
        )

    def _owner(self, stream: Stream, feature: str) -> str:
        named = self._registry.features.get(feature)
        return (named.owner if named is not None else "") or stream.owner

    def _note_extra_fields(self, stream: Stream, fields: Iterable[str]) -> None:
        """Count each unmapped field once per stream (they are compatible and pass)."""
        seen = self._extra_seen.setdefault(stream.name, set())
        for name in fields:
            if name in seen or len(seen) >= _EXTRA_FIELDS_REMEMBERED:
                continue
            seen.add(name)
            SCHEMA_CHANGES.labels(source=stream.name, feature="", kind="extra_field").inc()
            detail = f"an unmapped field {name!r} (ignored)"
            self.signals.schema_change(stream.name, "", "extra_field", detail, _now_ms())
            log.info("stream %s carries an unmapped field %r: it is ignored", stream.name, name)

    def _observe(
        self,
        changes: Sequence[tuple[Stream, FeatureChange]],
        outcomes: Sequence[Mapping[str, str]],
        now_ms: int,
        offsets: Mapping[TopicPartition, int],
    ) -> None:
        # Counted per batch: a label lookup per value would cost more than the value's write.
        counts: dict[tuple[str, str, str], int] = {}
        lags: dict[str, list[int]] = {}
        newest: dict[str, int] = {}
        seen: dict[str, int] = {}
        for (stream, change), outcome in zip(changes, outcomes, strict=True):
            event_ms = change.event_time_ms
            lag_ms = max(0, now_ms - event_ms)
            source = stream.name
            seen[source] = max(event_ms, seen.get(source, event_ms))
            for feature, result in outcome.items():
                key = (feature, source, result)
                counts[key] = counts.get(key, 0) + 1
                if result == "written":
                    self._metrics.lag(feature, source).observe(lag_ms / 1000)
                    lags.setdefault(feature, []).append(lag_ms)
                    newest[feature] = max(event_ms, newest.get(feature, event_ms))
        report = self.report
        for (feature, source, result), count in counts.items():
            self._metrics.updates(feature, source, result).inc(count)
            setattr(report, result, getattr(report, result) + count)
        for feature, values in lags.items():
            self.signals.wrote(feature, values, newest[feature], now_ms)
        for source, event_ms in seen.items():
            self.signals.seen(source, event_ms)
        consumer = self._require_consumer()
        for tp, offset in offsets.items():
            partition = str(tp.partition)
            metrics.COMMITTED_OFFSET.labels(topic=tp.topic, partition=partition).set(offset)
            end = consumer.highwater(tp)
            if end is not None:
                metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=partition).set(
                    max(0, end - offset)
                )

    async def _flush_signals(self) -> None:
        """Measure every assigned partition's lag and flush the signals, when due."""
        if not self.signals.due():
            return
        consumer = self._require_consumer()
        # High watermarks first, with no await between them and the assignment: a
        # rebalance during a position's wait below then shows as IllegalStateError.
        ends = {tp: consumer.highwater(tp) for tp in consumer.assignment()}
        for tp, end in ends.items():
            if end is None:
                continue
            try:
                async with asyncio.timeout(_POSITION_WAIT_S):
                    position = await consumer.position(tp)
            except (IllegalStateError, TimeoutError):
                continue
            self.signals.consumer_lag(tp.topic, tp.partition, end - position, _now_ms())
        await self.signals.flush()

    async def _follow_controls(self) -> None:
        """Pause or resume the topics operators paused or resumed since the last look."""
        now = time.monotonic()
        if now - self._control_checked < _CONTROL_INTERVAL_S:
            return
        self._control_checked = now
        try:
            paused = await self.controls.paused()
        except (RedisError, OSError):
            return
        wanted = {topic for topic in paused if topic in self._streams}
        if wanted == self._paused:
            return
        consumer = self._require_consumer()
        assigned = consumer.assignment()
        consumer.pause(*(tp for tp in assigned if tp.topic in wanted - self._paused))
        consumer.resume(*(tp for tp in assigned if tp.topic in self._paused - wanted))
        for topic in wanted - self._paused:
            log.warning("topic %s is paused by an operator", topic)
        for topic in self._paused - wanted:
            log.warning("topic %s is resumed", topic)
        self._paused = wanted

    async def _revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # The batch in hand is committed before the partitions go: wait for it.
        async with self._batch:
            self.signals.forget(revoked)
            for tp in revoked:
                for gauge in (metrics.CONSUMER_LAG, metrics.COMMITTED_OFFSET):
                    with contextlib.suppress(KeyError):
                        gauge.remove(tp.topic, str(tp.partition))

    async def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        consumer = self._require_consumer()
        fresh = [tp for tp in assigned if tp not in self._replayed]
        paused = [tp for tp in assigned if tp.topic in self._paused]
        if paused:
            consumer.pause(*paused)
        if self._replay is None or not fresh:
            return
        self._replayed.update(fresh)
        if self._replay.offsets is not None:
            for tp in fresh:
                if tp in self._replay.offsets:
                    consumer.seek(tp, self._replay.offsets[tp])
                    log.warning("replaying %s from offset %d", tp, self._replay.offsets[tp])
        if self._replay.from_time is not None:
            moment = to_millis(self._replay.from_time)
            found = await consumer.offsets_for_times(dict.fromkeys(fresh, moment))
            for tp, position in found.items():
                if position is None:
                    await consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, position.offset)
                    log.warning("replaying %s from offset %d", tp, position.offset)


class _NotDelivered(Exception):
    """Dead letters the broker did not acknowledge; the batch waits for them."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: IngestWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker._assigned(assigned)


def entity_write(change: FeatureChange, now_ms: int) -> EntityWrite:
    """The compare-and-set of one decoded change: its values and its deletions."""
    lineage_id = lineage_id_for(
        change.channel,
        change.source_system,
        change.source_ref,
        change.event_id,
        change.entity,
        change.entity_id,
        change.event_time_ms,
    )

    # Every value of a change shares its lineage: one struct made in full, copies of it.
    template = StoredValue(
        value=None,
        event_time_ms=change.event_time_ms,
        ingested_at_ms=now_ms,
        lineage_id=lineage_id,
        kind="push",
        source_system=change.source_system,
        source_ref=change.source_ref,
        schema_version=change.schema_version,
        transform=change.transform,
        sequence=change.sequence,
        deleted=False,
        effective_time_ms=change.effective_time_ms,
        channel=change.channel,
        event_id=change.event_id,
        stream=change.stream,
        change=change.change,
    )
    replace = msgspec.structs.replace
    values = {name: replace(template, value=value) for name, value in change.values.items()}
    if change.deleted:
        gone = replace(template, deleted=True)
        values.update(dict.fromkeys(change.deleted, gone))
    return EntityWrite(
        change.entity,
        change.entity_id,
        change.event_time_ms,
        change.sequence,
        values,
        change.event_id,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _raw(record: ConsumerRecord) -> RawRecord:
    headers = [(name, bytes(value or b"")) for name, value in record.headers]
    return RawRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=headers,
        timestamp_ms=record.timestamp,
    )
