"""The durable side of scoregate: audit store, transactional outbox and relay to Kafka.

This package is the whole interface the gateway uses; its modules are not imported
from outside it (an import-linter contract in ``pyproject.toml`` holds to that).

A decision and its outcome event are committed together in PostgreSQL
(:class:`AuditStore`); :class:`OutboxRelay` then publishes the event to Kafka as a
CloudEvent through :class:`KafkaPublisher`, in order per entity, retrying until the
broker takes it or sending it to the dead-letter topic, where :class:`DeadLetterQueue`
lists and redrives it. :class:`Retention` keeps month partitions ready and drops
what is past retention.

Parts:
    Settings: :class:`WritebackConfig` (``WritebackConfig.from_env`` reads
        ``SCOREGATE_*`` variables).
    PostgreSQL: :func:`create_pool`, and :func:`reconnect_if_read_only` for a pool
        whose server became a read-only standby; :func:`ensure_database` and
        :func:`migrate` create and migrate the schema (module :mod:`writeback.schema`).
    Decisions: :class:`AuditStore` (group commit, reads, rollbacks),
        :class:`DecisionReads` (access log, search, chain verification),
        :class:`DecisionSealer` and :func:`verify` (the hash chain over the records).
    Served staleness: :class:`FreshnessRollup` (the rollup of committed decisions),
        :func:`serve_windows` and :func:`staleness_windows` (windows read from it, as
        :class:`ServeCounts` and histogram buckets).
    Reconciliation: :class:`ReconciliationStore` (runs, findings, the per-source
        run lock).
    Freshness alerts: :class:`FreshnessAlertStore` (one evaluation at a time, its
        :class:`AlertEvaluation` storing each :class:`AlertUpdate` and queueing the
        CloudEvent of a change in the outbox; :class:`StoredAlert` states).
    Events: :class:`OutboxRelay`, :class:`KafkaPublisher`, :class:`DeadLetterQueue`
        (with :class:`OutboxStats`), :class:`Retention` (with :class:`RetentionReport`).
    Errors: :class:`AuditUnavailable` (PostgreSQL could not be reached or used, from
        any part), :class:`RecordRefused`, :class:`RequestMismatch`, :class:`BadCursor`,
        :class:`BadDeadLetterCursor`, :class:`NotDeadLettered`.
    Commands: :func:`add_commands` adds relay, migrate, maintain, dlq and audit
        verify to the ``scoregate`` command (module :mod:`writeback.cli`).

Importing the package registers the write-back Prometheus instruments (publish
latency, commit-to-publish delay, published, failed and dead-lettered events) in the
process's default registry, where the gateway's ``/metrics`` serves them.
"""

from writeback import metrics as _metrics  # noqa: F401 - registers the instruments
from writeback.audit_store import AuditStore
from writeback.cli import add_commands
from writeback.config import WritebackConfig
from writeback.dead_letters import DeadLetterQueue, OutboxStats
from writeback.decision_reads import DecisionReads
from writeback.errors import (
    AuditUnavailable,
    BadCursor,
    BadDeadLetterCursor,
    NotDeadLettered,
    RecordRefused,
    RequestMismatch,
)
from writeback.freshness import FreshnessRollup, ServeCounts, serve_windows, staleness_windows
from writeback.freshness_alerts import (
    AlertEvaluation,
    AlertUpdate,
    FreshnessAlertStore,
    StoredAlert,
)
from writeback.kafka import KafkaPublisher, OutgoingMessage
from writeback.pool import create_pool, reconnect_if_read_only
from writeback.reconciliation import ReconciliationStore
from writeback.relay import ERROR_HEADER_PREFIX, OutboxRelay
from writeback.retention import Retention, RetentionReport
from writeback.schema import ensure_database, migrate
from writeback.seals import DecisionSealer, verify

__all__ = [
    "ERROR_HEADER_PREFIX",
    "AlertEvaluation",
    "AlertUpdate",
    "AuditStore",
    "AuditUnavailable",
    "BadCursor",
    "BadDeadLetterCursor",
    "DeadLetterQueue",
    "DecisionReads",
    "DecisionSealer",
    "FreshnessAlertStore",
    "FreshnessRollup",
    "KafkaPublisher",
    "NotDeadLettered",
    "OutboxRelay",
    "OutboxStats",
    "OutgoingMessage",
    "ReconciliationStore",
    "RecordRefused",
    "RequestMismatch",
    "Retention",
    "RetentionReport",
    "ServeCounts",
    "StoredAlert",
    "WritebackConfig",
    "add_commands",
    "create_pool",
    "ensure_database",
    "migrate",
    "reconnect_if_read_only",
    "serve_windows",
    "staleness_windows",
    "verify",
]
