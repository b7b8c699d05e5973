"""What the ingest worker reads and what decoding makes of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

from contracts.features import ChangePosition, Channel, FeatureScalar, StreamPosition

# Structs rather than dataclasses: the worker makes several per record, and a frozen
# dataclass's __init__ costs a call per field. They hold plain data and never take part
# in a reference cycle, so the garbage collector need not track them (gc=False).


class RawRecord(msgspec.Struct, frozen=True, gc=False):
    """One Kafka record as consumed: bytes as they came, and where they sat."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    timestamp_ms: int


class FeatureChange(msgspec.Struct, frozen=True, gc=False):
    """What one record says about one entity's features, ready for the compare-and-set.

    Attributes:
        entity: the registry's entity name.
        entity_id: the entity's id.
        values: feature values to set, already of their declared dtypes.
        deleted: features the record deletes (a Debezium delete or tombstone).
        event_time_ms: when the fact happened, or the source's commit time.
        effective_time_ms: when it became authoritative, where the event says.
        sequence: orders changes of one entity that share an event time: the
            Debezium LSN where there is one, else the record's offset.
        event_id: the event's id (the CloudEvent id; for a change event, derived from
            its position in the source).
        channel: ``stream``, ``cdc`` or ``backfill``.
        source_system: the system the fact came from.
        source_ref: the upstream record, as its system names it.
        schema_version: the schema version of the event.
        transform: the transform that derived the values, if any.
        stream: where the record sat in Kafka (none for a backfill line).
        change: where a change event came from in the source database.
    """

    entity: str
    entity_id: str
    values: Mapping[str, FeatureScalar]
    deleted: tuple[str, ...]
    event_time_ms: int
    effective_time_ms: int | None
    sequence: int
    event_id: str
    channel: Channel
    source_system: str
    source_ref: str
    schema_version: int | None = None
    transform: str | None = None
    stream: StreamPosition | None = None
    change: ChangePosition | None = None


RejectionKind = Literal[
    "undecodable",
    "contract",
    "unknown_feature",
    "entity",
    "dtype",
    "schema_version",
    "missing_column",
    "column_type",
    "unsupported_op",
]
"""Why a record was dead-lettered. ``schema_version``, ``missing_column`` and
``column_type`` are schema changes at the boundary, counted as such."""

SCHEMA_CHANGE_KINDS: frozenset[RejectionKind] = frozenset(
    {"schema_version", "missing_column", "column_type"}
)
"""The rejection kinds that are schema changes of the source."""


class RecordRejected(Exception):
    """A record that fails its contract or the registry; it goes to the dead-letter topic.

    Attributes:
        kind: what failed.
        detail: a sentence naming the offending field.
        feature: the feature concerned, where there is one.
    """

    def __init__(self, kind: RejectionKind, detail: str, feature: str | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.feature = feature


class Decoded(msgspec.Struct, frozen=True, gc=False):
    """A record decoded: its changes, and unmapped fields it carried (compatible)."""

    changes: Sequence[FeatureChange]
    extra_fields: Sequence[str] = ()
