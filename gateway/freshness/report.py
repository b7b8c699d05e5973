"""``GET /freshness``: each feature's SLA against how it was served and what fed it.

:class:`FreshnessReporter` reads what every process shares, never its own memory, so
any gateway answers the same: served staleness from the audit store's rollup
(:func:`writeback.serve_windows` and :func:`writeback.staleness_windows`, every window
in one query each, a few rows per feature and slot however many decisions there were),
the rollup's backlog, and the signals ingest workers and gateways keep in Redis
(:func:`gateway.freshness.signals.read_signals`). The four reads run concurrently.

Its cost does not grow with the decisions: the rollup keeps a row per feature and slot
(and staleness bucket), and a window of a day reads its first partial hour from the
fine slots and the rest from the hourly ones: at 10 s slots, at most 360 fine and 25 hourly
slots per feature (times its staleness buckets), however many decisions they hold.
``loadtests/freshness_report.py`` measures it at a million decisions a day.

A report is kept for ``cache_s`` seconds and callers that ask while one is being made
wait for it (single flight): a page reloaded by many auditors costs one computation.
A report of one feature is cut from a fresh report of all when there is one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from contracts import freshness as out
from contracts.registry import Feature, Stream
from gateway.freshness.histogram import quantiles
from gateway.freshness.signals import (
    BreakerCounts,
    FeatureSignals,
    FreshnessSignals,
    read_signals,
)
from gateway.registry import Registry
from writeback import (
    AuditUnavailable,
    FreshnessRollup,
    ServeCounts,
    serve_windows,
    staleness_windows,
)

WINDOWS_S: dict[out.WindowName, int] = {"5m": 300, "1h": 3600, "1d": 86_400}
"""The report's windows, by name, in seconds."""
SIGNALS_TIMEOUT_S = 2.0
"""How long the report waits for Redis before it goes without the shared signals."""

_STORE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_NO_SERVES = ServeCounts()


class FreshnessReporter:
    """Makes freshness reports from the audit store's rollup and the signals in Redis.

    Args:
        registry: The features, sources and streams reported on.
        pool: The audit database's pool.
        redis: The Redis the signals are shared in (the online store's).
        prefix: The online store's key prefix.
        resolution_s: The rollup's fine grain (``freshness_resolution_s``).
        cache_s: How long a report is served again before a new one is made; 0 makes
            one on every call (concurrent callers still share it).
        signals_timeout_s: How long to wait for Redis before reporting without it.
        clock: Monotonic seconds, for the cache.
    """

    def __init__(
        self,
        registry: Registry,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        prefix: str,
        resolution_s: int,
        cache_s: float = 2.0,
        *,
        signals_timeout_s: float = SIGNALS_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._redis = redis
        self._prefix = prefix
        self.resolution_s = resolution_s
        self._cache_s = cache_s
        self._signals_timeout_s = signals_timeout_s
        self._clock = clock
        self._rollup = FreshnessRollup(pool, resolution_s)
        self._streams = list(registry.file.streams)
        self._fed_by = {name: _streams_feeding(name, self._streams) for name in registry.features}
        self._cached: dict[str | None, tuple[float, out.FreshnessReport]] = {}
        self._making: dict[str | None, asyncio.Task[out.FreshnessReport]] = {}
        self._owns_client = False

    @classmethod
    def from_url(
        cls,
        registry: Registry,
        pool: asyncpg.Pool,
        redis_url: str,
        prefix: str,
        resolution_s: int,
        cache_s: float = 2.0,
    ) -> FreshnessReporter:
        """A reporter with a Redis client of its own (closed by :meth:`close`).

        Its connections are apart from the online store's, whose short timeouts are
        those of the request path.
        """
        client = aioredis.Redis.from_url(
            redis_url, socket_timeout=SIGNALS_TIMEOUT_S, socket_connect_timeout=SIGNALS_TIMEOUT_S
        )
        reporter = cls(registry, pool, client, prefix, resolution_s, cache_s)
        reporter._owns_client = True
        return reporter

    async def close(self) -> None:
        """Let a report being made finish, and close the Redis client if it is ours."""
        await asyncio.gather(*self._making.values(), return_exceptions=True)
        if self._owns_client:
            await self._redis.aclose()

    async def report(self, feature: str | None = None) -> out.FreshnessReport:
        """The report of every feature, or of ``feature`` (a name in the registry).

        Raises:
            KeyError: ``feature`` is not in the registry.
            AuditUnavailable: PostgreSQL could not be read.
        """
        if feature is not None and feature not in self._registry.features:
            raise KeyError(feature)
        if (cached := self._fresh(feature)) is not None:
            return cached
        if feature is not None and (whole := self._fresh(None)) is not None:
            return _only(whole, feature)
        making = self._making.get(feature)
        if making is None:
            making = asyncio.create_task(self._make(feature), name="freshness-report")
            self._making[feature] = making
            making.add_done_callback(lambda task: self._made(feature, task))
        # One caller giving up (a client gone) does not cancel the others' report.
        return await asyncio.shield(making)

    def _fresh(self, feature: str | None) -> out.FreshnessReport | None:
        cached = self._cached.get(feature)
        if cached is not None and self._clock() - cached[0] < self._cache_s:
            return cached[1]
        return None

    def _made(self, feature: str | None, task: asyncio.Task[out.FreshnessReport]) -> None:
        self._making.pop(feature, None)
        if task.cancelled():
            return
        if task.exception() is None:
            self._cached[feature] = (self._clock(), task.result())

    async def _make(self, feature: str | None) -> out.FreshnessReport:
        now = datetime.now(UTC)
        names = list(self._registry.features) if feature is None else [feature]
        windows = list(WINDOWS_S.values())
        res = self.resolution_s
        signals = asyncio.create_task(self._signals(names, now))
        try:
            serves, staleness, backlog = await asyncio.gather(
                serve_windows(self._pool, res, windows, now, names),
                staleness_windows(self._pool, res, windows, now, names),
                self._rollup.backlog(),
            )
        except _STORE_ERRORS as exc:
            raise AuditUnavailable("the freshness rollup could not be read", exc) from exc
        finally:
            shared, unavailable = await signals
        return out.FreshnessReport(
            generated_at=now,
            resolution_s=res,
            backlog=backlog,
            gateway_processes=shared.processes if shared else 0,
            signals_unavailable=unavailable,
            features=[
                self._feature(self._registry.features[name], serves, staleness, shared)
                for name in names
            ],
            schema_changes=[
                out.SchemaChange(
                    at=c.at, stream=c.stream, feature=c.feature, kind=c.kind, detail=c.detail
                )
                for c in (shared.recent_schema_changes if shared else [])
                if feature is None or c.feature == feature
            ],
        )

    async def _signals(
        self, names: list[str], now: datetime
    ) -> tuple[FreshnessSignals | None, str | None]:
        """The shared signals, or None and why Redis could not give them."""
        streams = {s.name: s for name in names for s in self._fed_by[name]}
        try:
            async with asyncio.timeout(self._signals_timeout_s):
                found = await read_signals(self._redis, self._prefix, names, streams.values(), now)
        except TimeoutError:
            return None, f"Redis did not answer within {self._signals_timeout_s:g} s"
        except (RedisError, OSError) as exc:
            return None, f"Redis could not be read: {exc}"
        return found, None

    def _feature(
        self,
        feature: Feature,
        serves: Mapping[int, Mapping[str, ServeCounts]],
        staleness: Mapping[int, Mapping[str, Mapping[int, int]]],
        shared: FreshnessSignals | None,
    ) -> out.FeatureFreshness:
        name = feature.name
        objective = feature.objective or self._registry.file.freshness.objective
        source = None
        if feature.source is not None:
            spec = self._registry.sources[feature.source]
            breaker = f"source:{spec.name}"
            counts = shared.breakers.get(breaker) if shared else None
            source = out.FeatureSource(
                name=spec.name, owner=spec.owner, breaker=_breaker(breaker, counts)
            )
        return out.FeatureFreshness(
            name=name,
            entity=feature.entity,
            owner=feature.owner,
            sla_ms=feature.max_staleness_ms,
            objective=out.Objective(target=objective.target, period_days=objective.period_days),
            windows={
                window: _served(
                    serves[seconds].get(name, _NO_SERVES), staleness[seconds].get(name, {})
                )
                for window, seconds in WINDOWS_S.items()
            },
            ingest=_ingest(shared.features.get(name) if shared else None),
            source=source,
            streams=[_stream(s, shared) for s in self._fed_by[name]],
        )


def _streams_feeding(feature: str, streams: list[Stream]) -> list[Stream]:
    """The streams that may write ``feature``.

    The Debezium streams that map a column to it, and every feature-update stream: its
    events name their features, so any of them may carry it.
    """
    return [
        stream
        for stream in streams
        if stream.format == "feature_update"
        or any(
            column.feature == feature
            for table in stream.tables
            for column in table.columns.values()
        )
    ]


def _ingest(signals: FeatureSignals | None) -> out.FeatureIngest:
    if signals is None:
        none = out.IngestLag(written=0, p50_ms=None, p99_ms=None)
        return out.FeatureIngest(
            lag=dict.fromkeys(WINDOWS_S, none), last_event_time=None, schema_changes={}
        )
    return out.FeatureIngest(
        lag={
            window: out.IngestLag(written=lag.count, p50_ms=lag.p50_ms, p99_ms=lag.p99_ms)
            for window, lag in signals.ingest_lag.items()
        },
        last_event_time=signals.last_event_time,
        schema_changes=dict(signals.schema_changes),
    )


def _served(counts: ServeCounts, buckets: Mapping[int, int]) -> out.ServedWindow:
    p50, p95, p99 = quantiles(buckets, (0.5, 0.95, 0.99))
    served = counts.served
    by_status = out.StatusCounts(
        fresh=counts.fresh,
        fallback=counts.fallback,
        stale=counts.stale,
        default=counts.defaulted,
        missing=counts.missing,
    )
    shares = None
    if served:
        shares = out.StatusShares(
            **{k: v / served for k, v in msgspec.structs.asdict(by_status).items()}
        )
    return out.ServedWindow(
        served=served,
        within_sla=counts.within_sla,
        within_sla_share=counts.within_sla / served if served else None,
        staleness_p50_ms=p50,
        staleness_p95_ms=p95,
        staleness_p99_ms=p99,
        counts=by_status,
        shares=shares,
    )


def _breaker(name: str, counts: BreakerCounts | None) -> out.BreakerSummary:
    if counts is None:
        return out.BreakerSummary(name=name, state="unreported")
    state: out.BreakerState = "unreported"
    if counts.open:
        state = "open"
    elif counts.half_open:
        state = "half_open"
    elif counts.closed:
        state = "closed"
    return out.BreakerSummary(
        name=name,
        state=state,
        closed=counts.closed,
        open=counts.open,
        half_open=counts.half_open,
    )


def _stream(stream: Stream, shared: FreshnessSignals | None) -> out.StreamFreshness:
    seen = shared.streams.get(stream.name) if shared else None
    return out.StreamFreshness(
        name=stream.name,
        topic=stream.topic,
        format=stream.format,
        last_event_time=seen.last_event_time if seen else None,
        consumer_lag=seen.consumer_lag if seen else None,
        partitions=[
            out.PartitionLag(partition=p.partition, lag=p.lag, measured_at=p.measured_at)
            for p in (seen.partitions if seen else [])
        ],
        schema_changes=sum(c.count for c in seen.schema_changes) if seen else 0,
    )


def _only(report: out.FreshnessReport, feature: str) -> out.FreshnessReport:
    """The report of one feature, cut from a report of all."""
    return msgspec.structs.replace(
        report,
        features=[f for f in report.features if f.name == feature],
        schema_changes=[c for c in report.schema_changes if c.feature == feature],
    )
