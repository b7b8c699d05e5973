"""What ingest workers and gateway processes share in Redis about freshness.

``GET /freshness`` reports figures that hold across every process, so each process
writes what it knows to Redis and the report reads the sum: ingest workers
(:class:`IngestSignals`) their ingest lag, the newest event times, consumer lag and
schema changes; gateway processes (:class:`BreakerBoard`) the state of their breakers.
:func:`read_signals` reads it all back in two round trips.

Redis layout, every key under ``{prefix}:freshness:``:

============================== ======== ==============================================
key                            type     what
============================== ======== ==============================================
``lag:m:{feature}:{minute}``   hash     ingest lag counts, bucket (:func:`bucket_of`)
                                        -> values, of the values written in that minute
                                        (``minute`` = epoch ms // 60 000); kept 2 h
``lag:h:{feature}:{hour}``     hash     the same per hour (epoch ms // 3 600 000);
                                        kept 2 days
``event:stream``               zset     stream -> newest event time (epoch ms) any
                                        worker saw on it (``ZADD GT``: the max wins)
``event:feature``              zset     feature -> newest event time written
``consumer_lag``               hash     ``{topic}:{partition}`` -> ``"{lag} {ms}"``:
                                        records not yet committed, and when the
                                        partition's owner measured it
``schema:counts``              hash     ``{stream}:{feature}:{kind}`` -> schema
                                        changes counted (feature empty when none)
``schema:recent``              stream   the latest schema changes (about 100): at,
                                        stream, feature, kind, detail
``breakers:live``              zset     gateway process -> when its entry expires
                                        (epoch ms; three publication intervals on)
``breakers:{process}``         hash     breaker name -> state of that process's
                                        breaker; expires with the heartbeat
============================== ======== ==============================================

Every key's members come from the registry (features, streams, the schema change
kinds), the partitions of its topics, or gateway processes alive in the last three
intervals: nothing a record carries names a key or a field.

Counts add up by bucket across workers, so percentiles of the sum are percentiles of
every value written (within the histogram's resolution). A consumer lag older than a
minute is not counted: a partition that moved to another worker is counted once, by
its new owner, which overwrites the entry.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from prometheus_client import Counter
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from contracts.registry import Stream
from gateway.breaker import DependencyBreaker
from gateway.freshness.histogram import bucket_of, merge, quantiles
from gateway.ingest.records import SCHEMA_CHANGE_KINDS

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
MINUTES_KEPT_S = 2 * 3600 + 120
"""How long a minute's lag counts are kept: two hours, and a margin for late flushes."""
HOURS_KEPT_S = 2 * 86400 + 3600
"""How long an hour's lag counts are kept: two days, and a margin."""
EVENT_TIMES_KEPT_S = 30 * 86400
"""The event-time and consumer-lag keys outlive their last write by a month at most."""
CONSUMER_LAG_MAX_AGE_S = 60.0
"""A consumer lag measured longer ago than this is not counted (its partition moved)."""
RECENT_SCHEMA_CHANGES = 100
"""Schema changes kept in the recent list (approximately: the stream is trimmed by ~)."""
DETAIL_MAX = 500
"""Characters of a schema change's detail kept."""
WINDOWS: dict[str, int] = {"5m": 5 * MINUTE_MS, "1h": HOUR_MS, "1d": 24 * HOUR_MS}
"""The windows lag is summed over, by name, in milliseconds."""
SCHEMA_KINDS: frozenset[str] = frozenset({*SCHEMA_CHANGE_KINDS, "extra_field"})
"""The schema change kinds ingest counts: dead-lettered ones and unmapped fields."""

FLUSH_FAILURES = Counter(
    "scoregate_freshness_signal_flush_failures",
    "Flushes of the ingest worker's freshness signals to Redis that failed (the counts"
    " are kept for the next flush, up to a bound).",
)
SIGNALS_DROPPED = Counter(
    "scoregate_freshness_signals_dropped",
    "Ingest lag counts dropped unflushed: kept for longer than the worker keeps them"
    " while Redis was unreachable, or in a flush that timed out (Redis may have applied"
    " it, and sending it again could count it twice).",
)
BOARD_FAILURES = Counter(
    "scoregate_freshness_breaker_board_failures",
    "Publications of this gateway process's breaker states to Redis that failed.",
)

_FAILURE_LOG_INTERVAL_S = 60.0
_MAX_BACKOFF_S = 30.0


def keys_prefix(prefix: str) -> str:
    """Where the freshness keys of an online store with key prefix ``prefix`` live."""
    return f"{prefix}:freshness"


class _RateLimitedLog:
    """A warning logged at most once a minute, saying how many it stood for."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._last = -math.inf
        self._suppressed = 0

    def warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last < _FAILURE_LOG_INTERVAL_S:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        log.warning("%s failed: %r%s", self._what, exc, more)
        self._last = now
        self._suppressed = 0


class _PendingChange(msgspec.Struct, frozen=True):
    at_ms: int
    stream: str
    feature: str
    kind: str
    detail: str


class IngestSignals:
    """An ingest worker's freshness signals, counted in memory and flushed to Redis.

    The worker tells it, per batch, what it wrote and saw; :meth:`flush` writes what
    accumulated since the last flush in one pipeline, at most once per
    ``flush_interval_s`` when called through :meth:`flush_if_due`. A flush that fails
    (Redis down or slow) raises nothing: it is logged at most once a minute and counted
    in ``scoregate_freshness_signal_flush_failures``, what it held is kept for the next
    one, and the next tries wait longer (doubling up to 30 s). A flush that timed out
    may have been applied: of it, only what can be written twice without harm (event
    times, consumer lags) is kept; its counts are dropped. What is kept is bounded:
    lag counts of at most ``max_pending_minutes`` minutes (older minutes are dropped and
    counted in ``scoregate_freshness_signals_dropped``), one newest event time per
    stream and feature, one consumer lag per assigned partition, counts per stream,
    feature and kind, and the last 100 schema changes.

    Args:
        redis: the online store's Redis.
        prefix: the online store's key prefix.
        features: the registry's feature names; values of other features are ignored.
        streams: the registry's streams; records of other streams are ignored.
        flush_interval_s: flushes at most this often.
        flush_timeout_s: a flush that takes longer is abandoned (its counts dropped).
        max_pending_minutes: minutes of lag counts kept while Redis is unreachable.
        clock: a monotonic clock in seconds, for the flush interval.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        features: Iterable[str],
        streams: Iterable[Stream],
        *,
        flush_interval_s: float = 1.0,
        flush_timeout_s: float = 0.5,
        max_pending_minutes: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._keys = keys_prefix(prefix)
        registered = list(streams)
        self._features = frozenset(features)
        self._streams = frozenset(s.name for s in registered)
        self._topics = frozenset(s.topic for s in registered)
        self._interval_s = flush_interval_s
        self._timeout_s = flush_timeout_s
        self._max_minutes = max(1, max_pending_minutes)
        self._clock = clock
        self._next_flush = -math.inf
        self._backoff_s = flush_interval_s
        self._failures = _RateLimitedLog("flushing the freshness signals to Redis")
        self._lags: dict[int, dict[str, dict[int, int]]] = {}
        self._feature_events: dict[str, int] = {}
        self._stream_events: dict[str, int] = {}
        self._consumer_lag: dict[tuple[str, int], tuple[int, int]] = {}
        self._revoked_since_take: set[tuple[str, int]] = set()
        self._schema_counts: dict[tuple[str, str, str], int] = {}
        self._recent: collections.deque[_PendingChange] = collections.deque(
            maxlen=RECENT_SCHEMA_CHANGES
        )

    def wrote(self, feature: str, lags_ms: Iterable[float], event_time_ms: int, at_ms: int) -> None:
        """Values of ``feature`` written into Redis at ``at_ms`` (epoch milliseconds).

        Args:
            feature: the feature.
            lags_ms: each written value's ingest lag (write time minus event time).
            event_time_ms: the newest event time among them.
            at_ms: when they were written; their lag counts in this minute and hour.
        """
        if feature not in self._features:
            return
        minute = at_ms // MINUTE_MS
        counts = self._lags.setdefault(minute, {}).setdefault(feature, {})
        for lag in lags_ms:
            bucket = bucket_of(lag)
            counts[bucket] = counts.get(bucket, 0) + 1
        if event_time_ms > self._feature_events.get(feature, -1):
            self._feature_events[feature] = event_time_ms
        if len(self._lags) > self._max_minutes:
            self._drop_oldest_minutes()

    def seen(self, stream: str, event_time_ms: int) -> None:
        """The newest event time of the records of ``stream`` in a batch."""
        if stream in self._streams and event_time_ms > self._stream_events.get(stream, -1):
            self._stream_events[stream] = event_time_ms

    def consumer_lag(self, topic: str, partition: int, lag: int, at_ms: int) -> None:
        """A partition's records not yet committed (end offset minus committed offset)."""
        if topic in self._topics:
            self._consumer_lag[(topic, partition)] = (max(0, lag), at_ms)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions no longer assigned: their lag is their new owner's to report."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._consumer_lag.pop(key, None)
            self._revoked_since_take.add(key)

    def schema_change(self, stream: str, feature: str, kind: str, detail: str, at_ms: int) -> None:
        """A schema change detected on ``stream`` (``feature`` empty when it names none)."""
        if stream not in self._streams or kind not in SCHEMA_KINDS:
            return
        if feature not in self._features:
            feature = ""
        key = (stream, feature, kind)
        self._schema_counts[key] = self._schema_counts.get(key, 0) + 1
        self._recent.append(_PendingChange(at_ms, stream, feature, kind, detail[:DETAIL_MAX]))

    @property
    def pending_minutes(self) -> int:
        """Minutes of lag counts not yet flushed."""
        return len(self._lags)

    @property
    def pending_values(self) -> int:
        """Lag counts (values) not yet flushed."""
        return sum(sum(c.values()) for by in self._lags.values() for c in by.values())

    def due(self) -> bool:
        """Whether the flush interval (or the back-off after a failure) has passed."""
        return self._clock() >= self._next_flush

    async def flush_if_due(self) -> bool:
        """Flush if :meth:`due`; returns whether a flush was attempted."""
        if not self.due():
            return False
        await self.flush()
        return True

    async def flush(self) -> bool:
        """Write what accumulated to Redis in one pipeline; returns whether it was written.

        Never raises for Redis: a failure keeps the counts for the next flush.
        """
        taken = self._take()
        if taken.empty():
            self._schedule(ok=True)
            return True
        pipe = self._redis.pipeline(transaction=False)
        self._queue(pipe, taken)
        try:
            async with asyncio.timeout(self._timeout_s):
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            FLUSH_FAILURES.inc()
            self._failures.warn(exc)
            # A refused connection applied nothing: it all goes again. A flush that timed
            # out may have been applied; the counts in it (not idempotent) are let go
            # rather than risk counting them twice, or more with each timeout.
            applied_maybe = isinstance(exc, TimeoutError | RedisTimeout)
            self._give_back(taken, counts=not applied_maybe)
            self._schedule(ok=False)
            return False
        self._schedule(ok=True)
        return True

    def _schedule(self, ok: bool) -> None:
        if ok:
            self._backoff_s = self._interval_s
        else:
            self._backoff_s = min(_MAX_BACKOFF_S, max(self._interval_s, self._backoff_s * 2))
        self._next_flush = self._clock() + (self._interval_s if ok else self._backoff_s)

    def _take(self) -> _Taken:
        taken = _Taken(
            lags=self._lags,
            feature_events=self._feature_events,
            stream_events=self._stream_events,
            consumer_lag=self._consumer_lag,
            schema_counts=self._schema_counts,
            recent=list(self._recent),
        )
        self._lags = {}
        self._feature_events = {}
        self._stream_events = {}
        self._consumer_lag = {}
        self._revoked_since_take = set()
        self._schema_counts = {}
        self._recent.clear()
        return taken

    def _give_back(self, taken: _Taken, counts: bool) -> None:
        """Merge what a failed flush held with what arrived since (newer wins, counts add).

        Without ``counts``, only what is idempotent to write again is kept: event times
        and consumer lags; lag counts and schema changes are dropped.
        """
        if counts:
            for minute, by_feature in taken.lags.items():
                mine = self._lags.setdefault(minute, {})
                for feature, by_bucket in by_feature.items():
                    merge(mine.setdefault(feature, {}), by_bucket)
        else:
            SIGNALS_DROPPED.inc(
                sum(sum(c.values()) for by in taken.lags.values() for c in by.values())
            )
        for name, ms in taken.feature_events.items():
            self._feature_events[name] = max(ms, self._feature_events.get(name, ms))
        for name, ms in taken.stream_events.items():
            self._stream_events[name] = max(ms, self._stream_events.get(name, ms))
        for tp, measured in taken.consumer_lag.items():
            # A partition measured again since, or revoked meanwhile, is not given back.
            if tp not in self._consumer_lag and tp not in self._revoked_since_take:
                self._consumer_lag[tp] = measured
        if counts:
            for key, count in taken.schema_counts.items():
                self._schema_counts[key] = self._schema_counts.get(key, 0) + count
            newer = list(self._recent)
            self._recent.clear()
            self._recent.extend(taken.recent)
            self._recent.extend(newer)
        self._drop_oldest_minutes()

    def _drop_oldest_minutes(self) -> None:
        while len(self._lags) > self._max_minutes:
            oldest = min(self._lags)
            dropped = self._lags.pop(oldest)
            SIGNALS_DROPPED.inc(sum(sum(c.values()) for c in dropped.values()))

    def _queue(self, pipe: Any, taken: _Taken) -> None:
        keys = self._keys
        for minute, by_feature in taken.lags.items():
            hour = minute * MINUTE_MS // HOUR_MS
            for feature, counts in by_feature.items():
                for key, ttl in (
                    (f"{keys}:lag:m:{feature}:{minute}", MINUTES_KEPT_S),
                    (f"{keys}:lag:h:{feature}:{hour}", HOURS_KEPT_S),
                ):
                    for bucket, count in counts.items():
                        pipe.hincrby(key, str(bucket), count)
                    pipe.expire(key, ttl)
        for key, events in (
            (f"{keys}:event:feature", taken.feature_events),
            (f"{keys}:event:stream", taken.stream_events),
        ):
            if events:
                pipe.zadd(key, dict(events), gt=True)
                pipe.expire(key, EVENT_TIMES_KEPT_S)
        if taken.consumer_lag:
            fields = {f"{t}:{p}": f"{lag} {at}" for (t, p), (lag, at) in taken.consumer_lag.items()}
            pipe.hset(f"{keys}:consumer_lag", mapping=fields)
            pipe.expire(f"{keys}:consumer_lag", EVENT_TIMES_KEPT_S)
        for (stream, feature, kind), count in taken.schema_counts.items():
            pipe.hincrby(f"{keys}:schema:counts", f"{stream}:{feature}:{kind}", count)
        for change in taken.recent:
            pipe.xadd(
                f"{keys}:schema:recent",
                {
                    "at": str(change.at_ms),
                    "stream": change.stream,
                    "feature": change.feature,
                    "kind": change.kind,
                    "detail": change.detail,
                },
                maxlen=RECENT_SCHEMA_CHANGES,
                approximate=True,
            )


class _Taken(msgspec.Struct, kw_only=True):
    """What one flush writes, taken out of the pending counts."""

    lags: dict[int, dict[str, dict[int, int]]]
    feature_events: dict[str, int]
    stream_events: dict[str, int]
    consumer_lag: dict[tuple[str, int], tuple[int, int]]
    schema_counts: dict[tuple[str, str, str], int]
    recent: list[_PendingChange]

    def empty(self) -> bool:
        return not (
            self.lags
            or self.feature_events
            or self.stream_events
            or self.consumer_lag
            or self.schema_counts
            or self.recent
        )


def process_id() -> str:
    """This process, unique across hosts and restarts: ``hostname-pid-random``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class BreakerBoard:
    """A gateway process's breaker states, published to Redis with a heartbeat.

    Every ``interval_s`` the board writes the state of each breaker (``closed``,
    ``open``, ``half-open``) in one hash of its own that expires three intervals on,
    and notes in ``breakers:live`` until when it counts. A process that stops
    publishing (it died, or Redis cannot be reached from it) drops out of the count
    within three intervals; :meth:`stop` takes it out at once.

    Args:
        redis: the online store's Redis.
        prefix: the online store's key prefix.
        breakers: the process's breakers, asked on every publication (sources and
            models may be made after the board).
        interval_s: how often the states are published.
        process: the process's id (:func:`process_id` if None).
        clock: wall-clock seconds (heartbeats are compared across hosts).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        breakers: Callable[[], Iterable[DependencyBreaker]],
        *,
        interval_s: float = 5.0,
        process: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._keys = keys_prefix(prefix)
        self._breakers = breakers
        self.interval_s = interval_s
        self.process = process or process_id()
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._owns_client = False
        self._failures = _RateLimitedLog("publishing the breaker states to Redis")

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        breakers: Callable[[], Iterable[DependencyBreaker]],
        *,
        interval_s: float = 5.0,
    ) -> BreakerBoard:
        """A board with a Redis client of its own (closed by :meth:`stop`)."""
        client = aioredis.Redis.from_url(url, socket_timeout=interval_s, socket_connect_timeout=2)
        board = cls(client, prefix, breakers, interval_s=interval_s)
        board._owns_client = True
        return board

    async def publish(self) -> bool:
        """Publish the states once; returns whether Redis took them (never raises for it)."""
        now_ms = int(self._clock() * 1000)
        ttl_ms = max(1, int(self.interval_s * 3 * 1000))
        states: dict[Any, Any] = {b.name: b.state for b in self._breakers()}
        live = f"{self._keys}:breakers:live"
        mine = f"{self._keys}:breakers:{self.process}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(mine)
        if states:
            pipe.hset(mine, mapping=states)
            pipe.pexpire(mine, ttl_ms)
        pipe.zadd(live, {self.process: now_ms + ttl_ms})
        pipe.zremrangebyscore(live, "-inf", now_ms)
        # Other processes may publish less often: the list outlives the longest of them.
        pipe.pexpire(live, max(ttl_ms, HOUR_MS))
        try:
            async with asyncio.timeout(self.interval_s):
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            BOARD_FAILURES.inc()
            self._failures.warn(exc)
            return False
        return True

    async def start(self) -> None:
        """Publish now and then every ``interval_s`` in the background."""
        if self._task is None:
            await self.publish()
            self._task = asyncio.create_task(self._run(), name="breaker-board")

    async def stop(self) -> None:
        """Stop publishing and take this process out of the count."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(f"{self._keys}:breakers:live", self.process)
        pipe.delete(f"{self._keys}:breakers:{self.process}")
        try:
            async with asyncio.timeout(self.interval_s):
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failures.warn(exc)
        if self._owns_client:
            await self._redis.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.publish()


class LagWindow(msgspec.Struct, frozen=True, kw_only=True):
    """Ingest lag of one feature over one window, summed over every ingest worker.

    Attributes:
        count: values written in the window.
        p50_ms: the median lag (within the histogram's 5% resolution); None if none.
        p99_ms: the 99th percentile lag; None if none.
        buckets: values per bucket (:func:`~gateway.freshness.histogram.bucket_of`).
    """

    count: int
    p50_ms: float | None
    p99_ms: float | None
    buckets: dict[int, int]


class FeatureSignals(msgspec.Struct, frozen=True, kw_only=True):
    """What ingest did for one feature.

    Attributes:
        ingest_lag: per window (``5m``, ``1h``, ``1d``), the lag of the values written.
            A window covers its span and up to one slot (minute, or hour for ``1d``)
            more: its slots are those the span touches.
        last_event_time: the newest event time of a value written, by any worker.
        schema_changes: schema changes that named the feature, per kind.
    """

    ingest_lag: dict[str, LagWindow]
    last_event_time: datetime | None
    schema_changes: dict[str, int]


class PartitionLag(msgspec.Struct, frozen=True, kw_only=True):
    """One partition's consumer lag, as its owner last measured it."""

    partition: int
    lag: int
    measured_at: datetime


class SchemaChangeCount(msgspec.Struct, frozen=True, kw_only=True):
    """Schema changes of one kind on one stream, naming one feature (or none: ``""``)."""

    feature: str
    kind: str
    count: int


class StreamSignals(msgspec.Struct, frozen=True, kw_only=True):
    """What ingest saw on one stream.

    Attributes:
        topic: the stream's topic.
        last_event_time: the newest event time any worker saw on it.
        consumer_lag: records not yet committed, over the partitions measured in the
            last minute; None when none was.
        partitions: those partitions' lag, by partition.
        schema_changes: schema changes counted, per feature and kind.
    """

    topic: str
    last_event_time: datetime | None
    consumer_lag: int | None
    partitions: list[PartitionLag]
    schema_changes: list[SchemaChangeCount]


class SchemaChange(msgspec.Struct, frozen=True, kw_only=True):
    """One schema change detected by an ingest worker."""

    at: datetime
    stream: str
    feature: str
    kind: str
    detail: str


class BreakerCounts(msgspec.Struct, frozen=True, kw_only=True):
    """How many live gateway processes report a breaker in each state."""

    closed: int = 0
    open: int = 0
    half_open: int = 0


class FreshnessSignals(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ingest workers and gateway processes shared, read at one moment.

    Attributes:
        at: when it was read.
        features: per feature asked for.
        streams: per stream asked for, by name.
        recent_schema_changes: the latest schema changes on those streams, newest first.
        breakers: per breaker name (``source:<name>``, ``model:<name>``,
            ``online_store``), how many live gateway processes report each state.
        processes: live gateway processes publishing their breakers.
    """

    at: datetime
    features: dict[str, FeatureSignals]
    streams: dict[str, StreamSignals]
    recent_schema_changes: list[SchemaChange]
    breakers: dict[str, BreakerCounts]
    processes: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _at(ms: float | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


async def read_signals(
    redis: aioredis.Redis,
    prefix: str,
    features: Iterable[str],
    streams: Iterable[Stream],
    now: datetime,
    *,
    recent: int = 20,
    consumer_lag_max_age_s: float = CONSUMER_LAG_MAX_AGE_S,
) -> FreshnessSignals:
    """Read the shared freshness signals of ``features`` and ``streams`` as of ``now``.

    Two pipelined round trips: the first reads, per feature, the 61 minute and 25 hour
    lag hashes the windows touch, and the keys shared by all; the second, the breaker
    states of the processes alive then.

    Args:
        redis: the online store's Redis.
        prefix: the online store's key prefix.
        features: the features to report.
        streams: the streams to report.
        now: the moment the windows end at.
        recent: how many of the latest schema changes to return at most.
        consumer_lag_max_age_s: consumer lags measured longer ago are not counted.

    Returns:
        The signals; features and streams nobody wrote about have empty figures.
    """
    names = list(dict.fromkeys(features))
    wanted = list(streams)
    keys = keys_prefix(prefix)
    now_ms = int(now.timestamp() * 1000)
    minutes = range((now_ms - HOUR_MS) // MINUTE_MS, now_ms // MINUTE_MS + 1)
    hours = range((now_ms - WINDOWS["1d"]) // HOUR_MS, now_ms // HOUR_MS + 1)
    pipe = redis.pipeline(transaction=False)
    for feature in names:
        for minute in minutes:
            pipe.hgetall(f"{keys}:lag:m:{feature}:{minute}")
        for hour in hours:
            pipe.hgetall(f"{keys}:lag:h:{feature}:{hour}")
    pipe.zrange(f"{keys}:event:feature", 0, -1, withscores=True)
    pipe.zrange(f"{keys}:event:stream", 0, -1, withscores=True)
    pipe.hgetall(f"{keys}:consumer_lag")
    pipe.hgetall(f"{keys}:schema:counts")
    pipe.xrevrange(f"{keys}:schema:recent", count=RECENT_SCHEMA_CHANGES)
    pipe.zrangebyscore(f"{keys}:breakers:live", now_ms, "+inf")
    answers = await pipe.execute()

    per_feature = len(minutes) + len(hours)
    lag_answers, shared = answers[: per_feature * len(names)], answers[per_feature * len(names) :]
    feature_events, stream_events, consumer_lag, schema_counts, changes, live = shared
    by_kind = _schema_counts(schema_counts)
    feature_times = {_text(m): s for m, s in feature_events}
    out_features: dict[str, FeatureSignals] = {}
    for i, feature in enumerate(names):
        slots = lag_answers[i * per_feature : (i + 1) * per_feature]
        kinds: dict[str, int] = {}
        for (_, named, kind), count in by_kind.items():
            if named == feature:
                kinds[kind] = kinds.get(kind, 0) + count
        out_features[feature] = FeatureSignals(
            ingest_lag=_windows(slots[: len(minutes)], slots[len(minutes) :], minutes, now_ms),
            last_event_time=_at(feature_times.get(feature)),
            schema_changes=kinds,
        )
    stream_times = {_text(m): s for m, s in stream_events}
    partitions = _partitions(consumer_lag, now_ms - int(consumer_lag_max_age_s * 1000))
    out_streams: dict[str, StreamSignals] = {}
    for stream in wanted:
        lags = sorted(partitions.get(stream.topic, []), key=lambda p: p.partition)
        out_streams[stream.name] = StreamSignals(
            topic=stream.topic,
            last_event_time=_at(stream_times.get(stream.name)),
            consumer_lag=sum(p.lag for p in lags) if lags else None,
            partitions=lags,
            schema_changes=[
                SchemaChangeCount(feature=feature, kind=kind, count=count)
                for (named, feature, kind), count in sorted(by_kind.items())
                if named == stream.name
            ],
        )
    breakers, processes = await _breaker_states(redis, keys, [_text(p) for p in live])
    return FreshnessSignals(
        at=now,
        features=out_features,
        streams=out_streams,
        recent_schema_changes=_recent(changes, {s.name for s in wanted}, recent),
        breakers=breakers,
        processes=processes,
    )


def _windows(
    minute_slots: Sequence[Mapping[Any, Any]],
    hour_slots: Sequence[Mapping[Any, Any]],
    minutes: range,
    now_ms: int,
) -> dict[str, LagWindow]:
    first_5m = (now_ms - WINDOWS["5m"]) // MINUTE_MS
    five: dict[int, int] = {}
    hour: dict[int, int] = {}
    for minute, raw in zip(minutes, minute_slots, strict=True):
        recent = minute >= first_5m
        # int() takes the bytes Redis answers as they are: no decoding per field.
        for field, value in raw.items():
            bucket, count = int(field), int(value)
            hour[bucket] = hour.get(bucket, 0) + count
            if recent:
                five[bucket] = five.get(bucket, 0) + count
    day: dict[int, int] = {}
    for raw in hour_slots:
        for field, value in raw.items():
            bucket = int(field)
            day[bucket] = day.get(bucket, 0) + int(value)
    return {"5m": _window(five), "1h": _window(hour), "1d": _window(day)}


def _window(counts: dict[int, int]) -> LagWindow:
    p50, p99 = quantiles(counts, (0.5, 0.99))
    return LagWindow(
        count=sum(counts.values()), p50_ms=p50, p99_ms=p99, buckets=dict(sorted(counts.items()))
    )


def _schema_counts(raw: Mapping[Any, Any]) -> dict[tuple[str, str, str], int]:
    counts: dict[tuple[str, str, str], int] = {}
    for field, count in raw.items():
        stream, _, rest = _text(field).partition(":")
        feature, _, kind = rest.partition(":")
        counts[(stream, feature, kind)] = int(_text(count))
    return counts


def _partitions(raw: Mapping[Any, Any], oldest_ms: int) -> dict[str, list[PartitionLag]]:
    by_topic: dict[str, list[PartitionLag]] = {}
    for field, value in raw.items():
        topic, _, partition = _text(field).rpartition(":")
        lag, _, at = _text(value).partition(" ")
        measured = int(at)
        if measured < oldest_ms:
            continue
        by_topic.setdefault(topic, []).append(
            PartitionLag(
                partition=int(partition),
                lag=int(lag),
                measured_at=datetime.fromtimestamp(measured / 1000, UTC),
            )
        )
    return by_topic


def _recent(entries: Sequence[Any], streams: set[str], limit: int) -> list[SchemaChange]:
    found: list[SchemaChange] = []
    for _, fields in entries:
        values = {_text(k): _text(v) for k, v in fields.items()}
        if values.get("stream") not in streams:
            continue
        found.append(
            SchemaChange(
                at=datetime.fromtimestamp(int(values.get("at", "0")) / 1000, UTC),
                stream=values["stream"],
                feature=values.get("feature", ""),
                kind=values.get("kind", ""),
                detail=values.get("detail", ""),
            )
        )
        if len(found) >= limit:
            break
    return found


async def _breaker_states(
    redis: aioredis.Redis, keys: str, live: Sequence[str]
) -> tuple[dict[str, BreakerCounts], int]:
    if not live:
        return {}, 0
    pipe = redis.pipeline(transaction=False)
    for process in live:
        pipe.hgetall(f"{keys}:breakers:{process}")
    answers = await pipe.execute()
    tally: dict[str, dict[str, int]] = {}
    processes = 0
    for states in answers:
        if not states:
            # Its heartbeat is still on the list but its entry expired or was removed.
            continue
        processes += 1
        for name, state in states.items():
            by_state = tally.setdefault(_text(name), {})
            key = _text(state).replace("-", "_")
            by_state[key] = by_state.get(key, 0) + 1
    return {
        name: BreakerCounts(
            closed=by.get("closed", 0), open=by.get("open", 0), half_open=by.get("half_open", 0)
        )
        for name, by in sorted(tally.items())
    }, processes
