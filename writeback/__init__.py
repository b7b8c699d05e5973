"""The durable side of scoregate: audit store, transactional outbox and relay to Kafka.

A decision and its outcome event are committed together in PostgreSQL
(:class:`AuditStore`); :class:`OutboxRelay` then publishes the event to Kafka as a
CloudEvent through :class:`KafkaPublisher`, in order per entity, retrying until the
broker takes it or sending it to the dead-letter topic, where :class:`DeadLetterQueue`
lists and redrives it. :class:`Retention` keeps month partitions ready and drops
what is past retention. Schema migrations live in :mod:`writeback.migrate` (not
re-exported here, so that the function ``migrate`` does not shadow its module).
"""

from writeback.audit_store import AuditStore, AuditUnavailable
from writeback.config import WritebackConfig
from writeback.dead_letters import DeadLetterQueue, NotDeadLettered
from writeback.kafka import KafkaPublisher, OutgoingMessage
from writeback.pool import create_pool
from writeback.relay import OutboxRelay
from writeback.retention import Retention

__all__ = [
    "AuditStore",
    "AuditUnavailable",
    "DeadLetterQueue",
    "KafkaPublisher",
    "NotDeadLettered",
    "OutboxRelay",
    "OutgoingMessage",
    "Retention",
    "WritebackConfig",
    "create_pool",
]
