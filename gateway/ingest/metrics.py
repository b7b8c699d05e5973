"""Prometheus instruments of the ingest worker, in the process's default registry.

Every label comes from the registry (feature and stream names), a fixed set
(outcomes, rejection kinds), or the broker's partitions of the registry's topics:
nothing a record carries mints a series.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# From a few milliseconds (a stream that keeps up) to an hour (a replay or a backlog).
_LAG_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

INGEST_LAG = Histogram(
    "scoregate_feature_ingest_lag_seconds",
    "From a value's event time (a change event: the source's commit) to its write into"
    " the online store, per feature and stream.",
    ["feature", "source"],
    buckets=_LAG_BUCKETS,
)
UPDATES = Counter(
    "scoregate_ingest_updates",
    "Feature values the ingest worker offered the online store, by outcome: written,"
    " older (a newer value was kept) or duplicate (the same event again).",
    ["feature", "source", "outcome"],
)
DEAD_LETTERS = Counter(
    "scoregate_ingest_dead_letters",
    "Records the ingest worker sent to the dead-letter topic, by reason.",
    ["source", "reason"],
)
CONSUMER_LAG = Gauge(
    "scoregate_ingest_consumer_lag",
    "Records of a partition not yet committed by this worker's group (end offset minus"
    " committed offset), for the partitions this worker holds.",
    ["topic", "partition"],
)
COMMITTED_OFFSET = Gauge(
    "scoregate_ingest_committed_offset",
    "The last offset this worker committed, per partition it holds.",
    ["topic", "partition"],
)


class IngestSeries:
    """The per-feature series of :data:`UPDATES` and :data:`INGEST_LAG`, looked up once.

    A worker counts every value it writes; finding a labelled series costs more than
    counting in it, and the labels come from the registry, so each is kept once found.
    """

    def __init__(self) -> None:
        self._updates: dict[tuple[str, str, str], Counter] = {}
        self._lag: dict[tuple[str, str], Histogram] = {}

    def updates(self, feature: str, source: str, outcome: str) -> Counter:
        """The :data:`UPDATES` series of a feature, stream and outcome."""
        key = (feature, source, outcome)
        series = self._updates.get(key)
        if series is None:
            series = self._updates[key] = UPDATES.labels(
                feature=feature, source=source, outcome=outcome
            )
        return series

    def lag(self, feature: str, source: str) -> Histogram:
        """The :data:`INGEST_LAG` series of a feature and stream."""
        key = (feature, source)
        series = self._lag.get(key)
        if series is None:
            series = self._lag[key] = INGEST_LAG.labels(feature=feature, source=source)
        return series
