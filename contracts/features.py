"""Feature values as served and audited, their lineage, and the push API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

FeatureScalar = bool | int | float | str
"""A feature value; dtypes in the registry narrow it per feature."""

FeatureStatus = Literal["fresh", "stale", "fallback", "default", "missing", "request"]
"""How a served value was obtained.

- ``fresh``: from the online store, within its freshness SLA;
- ``fallback``: fetched from its source now because it was missing or stale;
- ``stale``: served beyond its SLA because the source failed and the policy allows;
- ``default``: the declared default, because nothing better was available;
- ``missing``: no value at all (only in records of failed assemblies);
- ``request``: sent by the caller as request-time context.
"""

Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class StreamPosition(msgspec.Struct, frozen=True, kw_only=True):
    """Where a feature-update event sat in Kafka."""

    topic: str
    partition: int
    offset: int


class ChangePosition(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where a change event came from in the source database (Debezium's ``source``).

    Attributes:
        connector: the connector kind (``postgresql``, ``mysql``, ...).
        name: the connector's logical name (the topic prefix).
        database: the database the row lives in.
        schema: the schema of the table, where the database has schemas.
        table: the table.
        lsn: the log sequence number of the change (PostgreSQL; the binlog position
            elsewhere), which orders the changes of one row.
        tx_id: the id of the transaction that committed the change.
        snapshot: the row was read by a snapshot, not changed.
    """

    connector: str
    name: str = ""
    database: str
    schema: str | None = None
    table: str
    lsn: int | None = None
    tx_id: int | None = None
    snapshot: bool = False


Channel = Literal["api", "stream", "cdc", "backfill"]
"""How a value reached the online store: ``POST /features/push``, a feature-update
event, a Debezium change event, or a backfill file through ``scoregate ingest``."""


class Lineage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where a value came from: the upstream record and how it was turned into a feature.

    Attributes:
        kind: ``push`` for values written into the online store by an upstream
            (``/features/push`` or ``scoregate ingest``), ``fallback`` for values
            fetched from a source API by the gateway, ``reconcile`` for values a
            reconciliation run read from a source API and wrote into the online store
            because the store disagreed with it.
        event_time: when the fact happened, or for a change event when the source
            database committed it.
        ingested_at: when scoregate stored the value.
        effective_time: when the value became authoritative, where the event says.
        channel: how a pushed value reached the store.
        event_id: the id of the event that carried the value (its CloudEvent id).
        stream: the event's topic, partition and offset.
        change: the change event's origin in the source database.
    """

    lineage_id: str
    kind: Literal["push", "fallback", "reconcile"]
    source_system: str
    source_ref: str
    schema_version: int | None = None
    transform: str | None = None
    entity: str
    entity_id: str
    event_time: datetime
    ingested_at: datetime
    effective_time: datetime | None = None
    channel: Channel | None = None
    event_id: str | None = None
    stream: StreamPosition | None = None
    change: ChangePosition | None = None


class FeatureValue(msgspec.Struct, frozen=True, kw_only=True):
    """One feature as served in a score response and kept in the decision record.

    Attributes:
        value: the value the model was given.
        status: how the value was obtained.
        source: where it was served from (``online_store``, ``source:<name>``,
            ``default`` or ``request``).
        event_time: when the fact the value describes happened.
        ingested_at: when scoregate stored (or fetched) the value.
        staleness_ms: the value's age when it was served, from its event time.
        max_staleness_ms: the feature's freshness SLA in the registry.
        requested_max_staleness_ms: the bound the request asked for this feature,
            when it sent one (``max_staleness_ms`` of the score request). The bound
            applied is the smaller of it and ``max_staleness_ms``: ``fresh`` means
            within that one, and a caller's bound never loosens the SLA.
        lineage_id: the value's lineage in the record.
        schema_version: the version of the upstream schema the value was read with.
        effective_time: when the value became authoritative, where its event says.
    """

    value: FeatureScalar | None
    status: FeatureStatus
    source: str
    event_time: datetime | None = None
    ingested_at: datetime | None = None
    staleness_ms: int | None = None
    max_staleness_ms: int | None = None
    lineage_id: str | None = None
    schema_version: int | None = None
    effective_time: datetime | None = None
    requested_max_staleness_ms: int | None = None


class PushLineage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The upstream record a pushed set of values was derived from."""

    source_system: Identifier
    source_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    schema_version: Annotated[int, msgspec.Meta(ge=0)] | None = None
    transform: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class PushRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /features/push``: values of one entity, as of ``event_time``."""

    entities: dict[str, Identifier]
    features: Annotated[dict[str, FeatureScalar], msgspec.Meta(min_length=1)]
    event_time: datetime
    lineage: PushLineage


class PushResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The lineage id of the push, and which features were written or kept newer."""

    lineage_id: str
    written: list[str]
    skipped_older: list[str]
