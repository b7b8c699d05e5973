"""Settings of the write-back side: PostgreSQL, Kafka, the relay and the group commit."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgspec

# SCOREGATE_* variable -> (WritebackConfig field, type); unset ones keep its default.
_TUNING: dict[str, tuple[str, type[int] | type[float] | type[str]]] = {
    "SCOREGATE_DLQ_TOPIC": ("dlq_topic", str),
    "SCOREGATE_RELAY_MAX_ATTEMPTS": ("relay_max_attempts", int),
    "SCOREGATE_RELAY_BACKOFF_MS": ("relay_backoff_ms", int),
    "SCOREGATE_RELAY_MAX_BACKOFF_MS": ("relay_max_backoff_ms", int),
    "SCOREGATE_RELAY_POLL_INTERVAL_MS": ("relay_poll_interval_ms", int),
    "SCOREGATE_RELAY_LINGER_MS": ("relay_linger_ms", int),
    "SCOREGATE_RELAY_BATCH_SIZE": ("relay_batch_size", int),
    "SCOREGATE_RELAY_LEASE_MS": ("relay_lease_ms", int),
    "SCOREGATE_PG_POOL_MIN_SIZE": ("pool_min_size", int),
    "SCOREGATE_PG_POOL_MAX_SIZE": ("pool_max_size", int),
    "SCOREGATE_PG_ACQUIRE_TIMEOUT_MS": ("pool_acquire_timeout_ms", int),
    "SCOREGATE_COMMIT_TIMEOUT_MS": ("commit_timeout_ms", int),
    "SCOREGATE_VERIFY_PACE": ("verify_pace", float),
    "SCOREGATE_PUBLISH_TIMEOUT_MS": ("publish_timeout_ms", int),
    "SCOREGATE_KAFKA_MAX_MESSAGE_BYTES": ("max_message_bytes", int),
    "SCOREGATE_TOPIC_PARTITIONS": ("topic_partitions", int),
    "SCOREGATE_OUTBOX_RETENTION_HOURS": ("outbox_retention_hours", float),
    "SCOREGATE_DECISION_RETENTION_DAYS": ("decision_retention_days", int),
    "SCOREGATE_FRESHNESS_RESOLUTION_S": ("freshness_resolution_s", int),
    "SCOREGATE_ALERTS_TOPIC": ("alerts_topic", str),
    "SCOREGATE_PARTITIONS_AHEAD_MONTHS": ("partitions_ahead_months", int),
    "SCOREGATE_MAINTENANCE_INTERVAL_S": ("maintenance_interval_s", float),
}


class WritebackConfig(msgspec.Struct, frozen=True):
    """Where decisions are stored and published, and how hard the relay tries.

    Attributes:
        database_url: PostgreSQL DSN (``postgresql://user@host:port/db``).
        kafka_bootstrap: Kafka bootstrap servers, comma separated.
        topic: The outcome-event topic.
        topic_partitions: Partitions the outcome topic is created with.
        event_source: The CloudEvents ``source`` of every event.
        idempotent_producer: Use Kafka's idempotent producer (brokers without
            ``InitProducerId``, such as Tansu, need ``False``).
        relay_batch_size: Outbox rows claimed per relay cycle.
        relay_poll_interval_ms: How often the relay looks for rows when no
            notification arrives.
        relay_linger_ms: How long the relay waits after a wake-up for more commits to
            join the cycle (0: none).
        relay_backoff_ms: First retry delay of an event that failed to publish.
        relay_max_backoff_ms: Cap of the exponential retry delay.
        relay_lease_ms: How long the rows a relay claims stay its own unless renewed;
            it renews them every third of that while it publishes, holding no
            transaction or connection meanwhile. A relay that dies mid-publish leaves
            its rows to the others once the lease runs out.
        pool_min_size: Connections the pool keeps open.
        pool_max_size: Connections the pool opens at most (opened as load needs them).
            One pool serves the group commit (one connection at a time), the idempotency
            and decision reads, the dead-letter queue, health checks, and the relay,
            sealer and retention (one each, none held across network I/O); the relay's
            LISTEN connection is its own. A burst of 512 ``/score`` requests waits a few
            seconds at most for its reads on a busy two-core machine.
        pool_acquire_timeout_ms: How long a caller waits for a free connection before
            it fails, as the group commit's own bound does (a burst waits its turn; a
            pool held by something stuck fails its callers instead of queueing them
            without end).
        commit_max_batch: Decisions one group-commit transaction takes at most.
        verify_pace: How long a verify asked over HTTP rests after each batch of the
            chain, as a multiple of the batch's time: at 1, the walk keeps at most half
            a PostgreSQL backend busy beside the commits (``scoregate audit verify``
            walks at full speed).
        commit_timeout_ms: Bound of one group-commit transaction, the wait for its
            connection included; past it every decision in it fails (``/score``: 503).
        publish_timeout_ms: Bound of one publish call (and of the producer's own
            delivery timeout), so a down broker cannot stall a relay cycle.
        relay_max_attempts: Failures of one event, of a kind a retry might fix, after
            which it goes to the dead-letter topic. A broker outage does not count:
            events wait it out in the outbox.
        dlq_topic: The dead-letter topic (default: ``<topic>.dlq``).
        max_message_bytes: The largest record the producer sends (its
            ``max_request_size``); a larger event is dead-lettered at once.
        outbox_retention_hours: How long delivered outbox rows are kept; their
            history stays in the write-back timeline.
        decision_retention_days: How long decision records and their timeline are
            kept at least; whole month partitions are dropped once past it.
        partitions_ahead_months: Month partitions kept ready beyond the current one.
        maintenance_interval_s: How often a gateway runs retention and partition
            upkeep (0: never; run ``scoregate maintain`` from a scheduler instead).
        freshness_resolution_s: The width of the fine slots served staleness is rolled
            up in (a divisor of 3600): the resolution of the 5-minute and hourly
            figures of ``GET /freshness`` and of burn-rate windows.
        alerts_topic: The topic freshness alerts are published to, through the outbox.
    """

    database_url: str
    kafka_bootstrap: str
    topic: str = "decision-outcomes"
    topic_partitions: int = 3
    event_source: str = "/scoregate"
    idempotent_producer: bool = False
    relay_batch_size: int = 200
    relay_poll_interval_ms: int = 500
    relay_linger_ms: int = 5
    relay_backoff_ms: int = 100
    relay_max_backoff_ms: int = 30000
    relay_lease_ms: int = 10000
    pool_min_size: int = 2
    pool_max_size: int = 32
    pool_acquire_timeout_ms: int = 10000
    commit_max_batch: int = 256
    commit_timeout_ms: int = 10000
    verify_pace: float = 1.0
    publish_timeout_ms: int = 30000
    relay_max_attempts: int = 10
    dlq_topic: str = ""
    max_message_bytes: int = 1048576
    outbox_retention_hours: float = 24.0
    decision_retention_days: int = 190
    partitions_ahead_months: int = 3
    maintenance_interval_s: float = 3600.0
    freshness_resolution_s: int = 10
    alerts_topic: str = "scoregate.freshness.alerts"

    def __post_init__(self) -> None:
        """Reject settings the relay or the pool cannot work with.

        Raises:
            ValueError: A count, size or interval that must be positive is below 1, a
                period is negative, the pool's minimum exceeds its maximum, the topic
                is empty, or the dead-letter topic is the outcome topic.
        """
        positive = {
            "topic_partitions": self.topic_partitions,
            "relay_batch_size": self.relay_batch_size,
            "relay_poll_interval_ms": self.relay_poll_interval_ms,
            "relay_backoff_ms": self.relay_backoff_ms,
            "relay_max_backoff_ms": self.relay_max_backoff_ms,
            "relay_lease_ms": self.relay_lease_ms,
            "pool_max_size": self.pool_max_size,
            "pool_acquire_timeout_ms": self.pool_acquire_timeout_ms,
            "commit_max_batch": self.commit_max_batch,
            "commit_timeout_ms": self.commit_timeout_ms,
            "publish_timeout_ms": self.publish_timeout_ms,
            "relay_max_attempts": self.relay_max_attempts,
            "max_message_bytes": self.max_message_bytes,
            "decision_retention_days": self.decision_retention_days,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not 0 <= self.pool_min_size <= self.pool_max_size:
            raise ValueError(
                f"pool_min_size must be between 0 and pool_max_size ({self.pool_max_size}),"
                f" got {self.pool_min_size}"
            )
        if not self.topic:
            raise ValueError("topic must not be empty")
        if self.dead_letter_topic == self.topic:
            raise ValueError("the dead-letter topic must differ from the outcome topic")
        if self.alerts_topic in ("", self.topic, self.dead_letter_topic):
            raise ValueError("alerts_topic must be set and differ from the outcome topics")
        if not 1 <= self.freshness_resolution_s <= 3600 or 3600 % self.freshness_resolution_s:
            raise ValueError(
                "freshness_resolution_s must divide 3600 seconds,"
                f" got {self.freshness_resolution_s}"
            )
        for name, number in {
            "outbox_retention_hours": self.outbox_retention_hours,
            "verify_pace": self.verify_pace,
            "partitions_ahead_months": self.partitions_ahead_months,
            "maintenance_interval_s": self.maintenance_interval_s,
        }.items():
            if number < 0:
                raise ValueError(f"{name} must not be negative, got {number}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WritebackConfig:
        """Read the settings from ``SCOREGATE_*`` variables, with local defaults.

        ``SCOREGATE_DATABASE_URL``, ``SCOREGATE_KAFKA_BOOTSTRAP``, ``SCOREGATE_TOPIC``,
        ``SCOREGATE_EVENT_SOURCE`` and ``SCOREGATE_KAFKA_IDEMPOTENT``, then one variable
        per tuning field (``SCOREGATE_RELAY_BATCH_SIZE``, ...); an unset or empty one
        keeps the field's default.

        Args:
            env: The variables; the process's environment when None.

        Raises:
            SystemExit: A variable does not parse as its field's type; the message
                names it.
        """
        env = os.environ if env is None else env
        return cls(
            database_url=env.get(
                "SCOREGATE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/scoregate"
            ),
            kafka_bootstrap=env.get("SCOREGATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            topic=env.get("SCOREGATE_TOPIC", "decision-outcomes"),
            event_source=env.get("SCOREGATE_EVENT_SOURCE", "/scoregate"),
            idempotent_producer=_flag(env.get("SCOREGATE_KAFKA_IDEMPOTENT", "false")),
            **_tuning(env),
        )

    @property
    def dead_letter_topic(self) -> str:
        """Where dead letters go: ``dlq_topic``, or ``<topic>.dlq`` when it is empty."""
        return self.dlq_topic or f"{self.topic}.dlq"


def _tuning(env: Mapping[str, str]) -> dict[str, Any]:
    tuning: dict[str, Any] = {}
    for variable, (field, kind) in _TUNING.items():
        raw = env.get(variable)
        if raw is None or raw == "":
            continue
        try:
            tuning[field] = kind(raw)
        except ValueError:
            raise SystemExit(f"{variable}: expected {kind.__name__}, got {raw!r}") from None
    return tuning


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise SystemExit(f"expected a boolean, got {value!r}")
