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


class Lineage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where a value came from: the upstream record and how it was turned into a feature.

    Attributes:
        kind: ``push`` for values written through ``/features/push``, ``fallback`` for
            values fetched from a source API by the gateway.
    """

    lineage_id: str
    kind: Literal["push", "fallback"]
    source_system: str
    source_ref: str
    schema_version: int | None = None
    transform: str | None = None
    entity: str
    entity_id: str
    event_time: datetime
    ingested_at: datetime


class FeatureValue(msgspec.Struct, frozen=True, kw_only=True):
    """One feature as served in a score response and kept in the decision record."""

    value: FeatureScalar | None
    status: FeatureStatus
    source: str
    event_time: datetime | None = None
    ingested_at: datetime | None = None
    staleness_ms: int | None = None
    max_staleness_ms: int | None = None
    lineage_id: str | None = None
    schema_version: int | None = None


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
