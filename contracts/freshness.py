"""The freshness report of ``GET /freshness``: per feature, its SLA and how it was kept.

Every figure holds across all gateway and ingest processes: served staleness is read
from the audit store's rollup of committed decisions, ingest lag, event times,
consumer lag and schema changes from what ingest workers share in Redis, breaker
states from what every live gateway process publishes there.

Windows are named ``5m``, ``1h`` and ``1d`` and end when the report was made.
Durations are in milliseconds; percentiles come from log-scaled histograms and are
within 2.5% of the true value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

WindowName = Literal["5m", "1h", "1d"]
BreakerState = Literal["closed", "half_open", "open", "unreported"]


class StatusCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Serves of a feature by how each was served.

    Attributes:
        fresh: From the online store, within its bound.
        fallback: Fetched from its source (stored was missing or too stale).
        stale: Beyond its SLA, because its source failed and its policy allows it.
        default: The declared default.
        missing: No value (the decision's assembly failed for it).
    """

    fresh: int = 0
    fallback: int = 0
    stale: int = 0
    default: int = 0
    missing: int = 0


class StatusShares(msgspec.Struct, frozen=True, kw_only=True):
    """The same as shares of the window's serves (0 to 1, summing to 1)."""

    fresh: float = 0.0
    fallback: float = 0.0
    stale: float = 0.0
    default: float = 0.0
    missing: float = 0.0


class ServedWindow(msgspec.Struct, frozen=True, kw_only=True):
    """How one feature was served over one window, by every gateway process.

    Request-time context is not counted, only stored features.

    Attributes:
        served: Serves in the window.
        within_sla: Serves whose staleness was at most the SLA recorded with them.
        within_sla_share: ``within_sla / served``; None when nothing was served.
        staleness_p50_ms: Median staleness of the serves that had one (a default or a
            missing value has none); None without any.
        staleness_p95_ms: Its 95th percentile.
        staleness_p99_ms: Its 99th percentile.
        counts: Serves by status.
        shares: Serves by status as shares; None when nothing was served.
    """

    served: int
    within_sla: int
    within_sla_share: float | None
    staleness_p50_ms: float | None
    staleness_p95_ms: float | None
    staleness_p99_ms: float | None
    counts: StatusCounts
    shares: StatusShares | None


class IngestLag(msgspec.Struct, frozen=True, kw_only=True):
    """Ingest lag (write time minus event time) of one feature's values over a window.

    Attributes:
        written: Values ingest workers wrote in the window.
        p50_ms: Median lag; None when nothing was written.
        p99_ms: 99th percentile lag; None when nothing was written.
    """

    written: int
    p50_ms: float | None
    p99_ms: float | None


class FeatureIngest(msgspec.Struct, frozen=True, kw_only=True):
    """What ingest workers did for one feature.

    Attributes:
        lag: Per window, the lag of the values written. A window covers its span and
            up to one slot (a minute, an hour for ``1d``) more.
        last_event_time: The newest event time of a value any worker wrote.
        schema_changes: Schema changes detected that named the feature, per kind.
    """

    lag: dict[str, IngestLag]
    last_event_time: datetime | None
    schema_changes: dict[str, int]


class BreakerSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A breaker's state across the live gateway processes.

    Attributes:
        name: The breaker (``source:<name>``).
        state: The worst state any live process reports (``open`` over
            ``half_open`` over ``closed``); ``unreported`` when none reports it.
        closed: Processes whose breaker is closed.
        open: Processes whose breaker is open.
        half_open: Processes whose breaker is half-open.
    """

    name: str
    state: BreakerState
    closed: int = 0
    open: int = 0
    half_open: int = 0


class FeatureSource(msgspec.Struct, frozen=True, kw_only=True):
    """The source API a feature falls back to, and its breaker.

    Attributes:
        name: The source's registry name.
        owner: Who runs it.
        breaker: Its breaker across the live gateway processes.
    """

    name: str
    owner: str
    breaker: BreakerSummary


class PartitionLag(msgspec.Struct, frozen=True, kw_only=True):
    """One partition's consumer lag, as its ingest worker last measured it."""

    partition: int
    lag: int
    measured_at: datetime


class StreamFreshness(msgspec.Struct, frozen=True, kw_only=True):
    """A stream that may feed a feature, as ingest workers last saw it.

    Attributes:
        name: The stream's registry name.
        topic: Its topic.
        format: ``feature_update`` or ``debezium``.
        last_event_time: The newest event time any worker saw on it.
        consumer_lag: Records not yet committed over the partitions measured in the
            last minute; None when none was.
        partitions: Those partitions' lag.
        schema_changes: Schema changes detected on the stream, all kinds and features.
    """

    name: str
    topic: str
    format: Literal["feature_update", "debezium"]
    last_event_time: datetime | None
    consumer_lag: int | None
    partitions: list[PartitionLag]
    schema_changes: int


class Objective(msgspec.Struct, frozen=True, kw_only=True):
    """A feature's freshness objective (its own, or the registry's default).

    Attributes:
        target: The share of serves that must be within the SLA.
        period_days: The period it is judged over.
    """

    target: float
    period_days: int


class FeatureFreshness(msgspec.Struct, frozen=True, kw_only=True):
    """One feature's freshness: its SLA, how it was served, and what fed it.

    Attributes:
        name: The feature.
        entity: The entity it describes.
        owner: Who answers for it (the registry's ``owner``; empty when none).
        sla_ms: Its freshness SLA (``max_staleness_ms``).
        objective: Its freshness objective.
        windows: Per window (``5m``, ``1h``, ``1d``), how it was served.
        ingest: What ingest workers did for it.
        source: The source API it falls back to; None when it has none.
        streams: The streams that may feed it: the Debezium streams mapping a column
            to it, and every feature-update stream (whose events name their features).
    """

    name: str
    entity: str
    owner: str
    sla_ms: int
    objective: Objective
    windows: dict[str, ServedWindow]
    ingest: FeatureIngest
    source: FeatureSource | None
    streams: list[StreamFreshness]


class SchemaChange(msgspec.Struct, frozen=True, kw_only=True):
    """One schema change an ingest worker detected (``feature`` empty when it names none)."""

    at: datetime
    stream: str
    feature: str
    kind: str
    detail: str


class FreshnessReport(msgspec.Struct, frozen=True, kw_only=True):
    """The freshness of the registry's features (or one of them), as of ``generated_at``.

    Attributes:
        generated_at: When the figures were read; the windows end here.
        resolution_s: The rollup's fine grain: a window of served staleness is exact
            to one slot of this many seconds at its start.
        backlog: Decisions committed and not yet rolled up: not counted yet.
        gateway_processes: Live gateway processes publishing their breaker states.
        signals_unavailable: Why the shared signals (ingest, consumer lag, schema
            changes, breakers) could not be read from Redis; None when they were.
            Without them those figures are empty and served staleness still holds.
        features: Per feature, in registry order.
        schema_changes: The latest schema changes on the registry's streams, newest
            first.
    """

    generated_at: datetime
    resolution_s: int
    backlog: int
    gateway_processes: int
    signals_unavailable: str | None
    features: list[FeatureFreshness]
    schema_changes: list[SchemaChange]
