"""Feature-update events: what upstream systems send to keep the online store fresh.

In Kafka a feature update is a CloudEvent in binary mode: the record value is a
:class:`FeatureUpdate` as JSON, and the CloudEvents attributes travel as headers
(``ce_specversion`` ``1.0``, ``ce_id``, ``ce_source``, ``ce_type`` =
:data:`FEATURES_UPDATED`, ``ce_time``, and ``content-type: application/json``). The
CloudEvent id is the event's id: a resend keeps it, and ``ce_source`` with ``ce_id``
names the event uniquely.

A backfill file holds the same events in CloudEvents structured mode, one
:class:`FeatureUpdateEvent` per line (JSON Lines).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec

from contracts.features import FeatureScalar, Identifier, PushLineage

FEATURES_UPDATED: Final = "scoregate.features.updated"
"""The CloudEvents ``type`` of a feature update."""

SPEC_VERSION: Final = "1.0"
"""The CloudEvents version feature updates follow."""

CONTENT_TYPE: Final = "application/json"
"""The content type of a feature update's data."""

CE_SPECVERSION: Final = "ce_specversion"
CE_ID: Final = "ce_id"
CE_SOURCE: Final = "ce_source"
CE_TYPE: Final = "ce_type"
CE_TIME: Final = "ce_time"
CONTENT_TYPE_HEADER: Final = "content-type"

EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
"""A CloudEvent id: unique within its source."""

EventSource = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
"""A CloudEvent source (a URI reference naming the producer)."""

AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
"""An RFC 3339 timestamp with its UTC offset."""


class FeatureUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """New values of one entity's features, as of ``event_time``: a feature-update event's data.

    Values are written with the same compare-and-set as ``POST /features/push``: a
    value older than the stored one by (event time, sequence) is kept out, so a late or
    replayed event never rolls a feature back.

    Attributes:
        entities: The one entity the values are about, as ``{entity key: id}``
            (``{"customer_id": "c-1"}``).
        features: Values by feature name; each feature must belong to that entity and
            the value must be of the feature's dtype.
        event_time: When the fact happened at its source; staleness is measured from it.
        effective_time: When the values became authoritative, where that differs from
            ``event_time`` (a correction effective later, a value valid from a date).
        lineage: The upstream record the values were derived from and how: its system,
            its reference there, the schema version of the event and the transform.
    """

    entities: Annotated[dict[str, Identifier], msgspec.Meta(min_length=1, max_length=1)]
    features: Annotated[dict[str, FeatureScalar], msgspec.Meta(min_length=1)]
    event_time: AwareTime
    effective_time: AwareTime | None = None
    lineage: PushLineage


class FeatureUpdateEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A feature update in CloudEvents structured JSON mode: one line of a backfill file.

    The attributes are those that travel as ``ce_*`` headers in Kafka. CloudEvents lets
    producers add extension attributes beside them, so other top-level keys are
    ignored; the ``data`` is held to :class:`FeatureUpdate` exactly.

    Attributes:
        specversion: The CloudEvents version, ``1.0``.
        id: The event's id; the same event sent again keeps it.
        source: Who produced the event.
        type: ``scoregate.features.updated``.
        time: When the event was produced.
        datacontenttype: ``application/json``.
        data: The update.
    """

    specversion: Literal["1.0"]
    id: EventId
    source: EventSource
    type: Literal["scoregate.features.updated"]
    time: AwareTime
    datacontenttype: Literal["application/json"] = CONTENT_TYPE
    data: FeatureUpdate
