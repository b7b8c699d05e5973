"""The registry file: entities, source APIs, features, models and the streams ingested.

Unknown keys in the file are errors, not ignored (``forbid_unknown_fields``).

The file is TOML; it decodes into these Structs at start-up, and the same shape is
served at ``GET /registry``. Cross-references (a feature's source, a model's
features, a stream's column mappings) are checked by the gateway when it loads the file.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from contracts.features import FeatureScalar

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
Millis = Annotated[int, msgspec.Meta(gt=0, le=600_000)]

DType = Literal["int64", "float64", "bool", "string"]
Policy = Literal["serve_stale", "default", "fail"]
Classification = Literal["public", "internal", "pii"]


class Entity(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Something decisions and features are about, and the key that names one.

    Ids of an entity go into source API paths and online-store keys, so callers may
    send only ids the entity admits.

    Attributes:
        pattern: A Python regular expression an id must match in full (e.g.
            ``^[A-Za-z0-9_-]{1,64}$``); without one, any id without control characters.
        max_length: The most characters an id may have.
    """

    name: Name
    key: Name
    description: str = ""
    pattern: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None
    max_length: Annotated[int, msgspec.Meta(ge=1, le=128)] = 128


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Attempts per call and the exponential backoff between them."""

    attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 2
    backoff_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 20
    max_backoff_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 200


class BreakerPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Circuit breaker thresholds: consecutive failures to open, time before a probe."""

    fail_max: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    reset_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 10_000
    success_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1


class Source(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A source API that features fall back to when the online store cannot serve them.

    A call is ``GET {url}{feature.path}`` with the entity key substituted; the answer
    is a JSON object holding the features' fields.

    Attributes:
        event_time_field: The answer's field that holds the upstream record's event
            time (ISO 8601, UTC if it names no zone); without it, the time of the call.
        ref_field: The answer's field that holds the upstream record's id; without
            one, the call's URL stands for it in the lineage.
        reconcile_calls_per_s: The budget of calls per second reconciliation may send
            the source, across every scoregate process (the source is a production
            system: reconciliation never takes more, and stops when the source's
            breaker opens). Calls made for ``/score`` do not count against it.
    """

    name: Name
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    owner: str
    timeout_ms: Millis = 200
    compliance: Classification = "internal"
    event_time_field: str = "event_time"
    ref_field: str | None = None
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64
    reconcile_calls_per_s: Annotated[float, msgspec.Meta(gt=0, le=10_000)] = 2.0
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = msgspec.field(default_factory=BreakerPolicy)


class FreshnessObjective(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The share of serves that must be within the freshness SLA, over a period.

    Attributes:
        target: The share of a feature's serves (in ``/score``) whose value was within
            its ``max_staleness_ms`` when served, such as 0.99. The rest of the
            period's serves, ``1 - target``, is the error budget.
        period_days: The period the objective is judged over.
    """

    target: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.99
    period_days: Annotated[int, msgspec.Meta(ge=1, le=90)] = 30


class BurnRateAlert(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A multi-window burn-rate alert, as in the SRE workbook's chapter on alerting.

    It fires when the burn rate (the share of serves outside the SLA divided by the
    error budget's share) is above ``burn_rate`` over both windows, and clears when it
    is not; the short window makes it clear soon after the cause ends.

    Attributes:
        name: The alert's name in events and on the page (``fast``, ``slow``).
        long_window_s: The long window, in seconds.
        short_window_s: The short window, in seconds; shorter than the long one.
        burn_rate: The rate both windows must exceed.
    """

    name: Name
    long_window_s: Annotated[int, msgspec.Meta(ge=1, le=30 * 86_400)]
    short_window_s: Annotated[int, msgspec.Meta(ge=1, le=30 * 86_400)]
    burn_rate: Annotated[float, msgspec.Meta(gt=0, le=10_000)]


def _default_alerts() -> list[BurnRateAlert]:
    return [
        BurnRateAlert(name="fast", long_window_s=3600, short_window_s=300, burn_rate=14.4),
        BurnRateAlert(name="slow", long_window_s=21_600, short_window_s=1800, burn_rate=6.0),
    ]


class FreshnessSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Freshness as an objective: the default objective of features and its alerts.

    Attributes:
        objective: The objective of every feature that declares none of its own.
        alerts: The burn-rate alerts evaluated for every feature; by default the
            workbook's fast (1 h and 5 min at 14.4) and slow (6 h and 30 min at 6) ones.
    """

    objective: FreshnessObjective = msgspec.field(default_factory=FreshnessObjective)
    alerts: list[BurnRateAlert] = msgspec.field(default_factory=_default_alerts)


class Feature(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A feature: its entity, type, freshness SLA, fallback source and failure policy.

    Attributes:
        include_in_events: Whether its value travels in outcome events; by default
            every feature's does except those classified ``pii``.
        objective: Its freshness objective; without one, the registry's default
            (``freshness.objective``).
        reconcile: Whether reconciliation compares its values in the online store
            with its source (it needs a source).
        tolerance: How far apart a stored and a source value may be and still agree,
            for numeric dtypes (absolute); bool and string values must be equal.
    """

    name: Name
    entity: Name
    dtype: DType
    max_staleness_ms: Annotated[int, msgspec.Meta(ge=0)]
    source: Name | None = None
    path: Annotated[str, msgspec.Meta(pattern=r"^/")] | None = None
    field: str | None = None
    on_unavailable: Policy = "fail"
    default: FeatureScalar | None = None
    classification: Classification = "internal"
    owner: str = ""
    schema_version: Annotated[int, msgspec.Meta(ge=0)] = 1
    description: str = ""
    include_in_events: bool | None = None
    objective: FreshnessObjective | None = None
    reconcile: bool = True
    tolerance: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class ContextFeature(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request-time feature the caller sends in ``context``."""

    name: Name
    dtype: DType
    classification: Classification = "internal"
    include_in_events: bool | None = None


class ModelInput(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the feature vector is laid out in the inference request.

    Attributes:
        layout: ``tensor``: one input named ``name`` of shape ``[1, n]`` in the
            model's feature order (scikit-learn style servers); ``columns``: one input
            per feature, named after it, of shape ``[1]`` (Triton-style models with
            named inputs). A batched call of ``k`` rows (see the model's
            ``max_batch_size``) has ``k`` in place of the 1.
    """

    layout: Literal["tensor", "columns"] = "tensor"
    name: str = "input-0"
    datatype: Literal["FP64", "FP32"] = "FP64"


class DecisionRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Label a decision ``label`` when the policy output is at least ``min``."""

    label: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    min: float


class DecisionPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Turn one model output into a label: the first rule whose ``min`` it reaches."""

    output: str
    rules: Annotated[list[DecisionRule], msgspec.Meta(min_length=1)]
    version: str = "1"


class Model(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A model served over the Open Inference Protocol v2 and its feature vector.

    Attributes:
        timeout_ms: Bound of one inference call.
        deadline_ms: The default budget of a whole ``/score`` request for this model
            (callers may lower it per request).
        max_batch_size: The most rows one inference call carries. Above 1, requests
            that wait while the model's calls are in flight go out together as one
            call with a batch dimension (``[n, features]`` for the tensor layout, ``[n]``
            per input for columns), and each row gets its outputs back by position;
            the model server must accept a batch dimension. 1 (the default) sends
            every row as a call of its own.
        max_batch_wait_ms: How long the oldest waiting row may be held for more rows
            to join it, when a call could go out but would carry fewer than
            ``max_batch_size``. 0 (the default) adds no wait: a call goes out as soon
            as one may, with the rows already waiting. The wait is spent from the
            model's share of the deadline, so it must be shorter than ``timeout_ms``;
            it needs ``max_batch_size`` above 1.
        max_batches_in_flight: With batching, how many calls may be in flight at once;
            rows that come while all are in flight wait for the next call. 1 (the
            default) suits a model server that scores one call at a time; raise it
            for servers with several model instances or workers.
    """

    name: Name
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    subject: Name
    endpoint: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    features: Annotated[list[Name], msgspec.Meta(min_length=1)]
    context: list[ContextFeature] = msgspec.field(default_factory=list)
    timeout_ms: Millis = 300
    deadline_ms: Millis = 1000
    owner: str = ""
    input: ModelInput = msgspec.field(default_factory=ModelInput)
    decision: DecisionPolicy | None = None
    retry: RetryPolicy = msgspec.field(default_factory=lambda: RetryPolicy(attempts=2))
    breaker: BreakerPolicy = msgspec.field(default_factory=BreakerPolicy)
    max_batch_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    max_batch_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 0
    max_batches_in_flight: Annotated[int, msgspec.Meta(ge=1, le=128)] = 1


class OnlineStoreSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the gateway treats the online store (Redis): per-read timeout and breaker.

    Attributes:
        timeout_ms: Bound of one read. A Redis read takes well under a millisecond;
            the timeout is for a Redis that hangs. It is generous because it also
            counts the time the gateway's own event loop takes to get back to the
            read: a tight one would open the breaker whenever the gateway itself is
            busy, and send every feature to the sources just when they can least
            afford it.
    """

    timeout_ms: Millis = 200
    breaker: BreakerPolicy = msgspec.field(
        default_factory=lambda: BreakerPolicy(fail_max=5, reset_timeout_ms=5000)
    )


Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=245, pattern=r"^[A-Za-z0-9._-]+$")]
"""A Kafka topic name, short enough that its dead-letter topic (``<topic>.dlq``) is one too."""

Column = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


class ColumnMapping(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The feature one column of a table feeds.

    Attributes:
        feature: The feature the column's value becomes; it must belong to the table's
            entity.
        dtype: The type the column holds, as a registry dtype. It must equal the
            feature's: declaring it here makes a change of either side a load error
            rather than a surprise in the stream.
    """

    feature: Name
    dtype: DType


class TableMapping(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the rows of one source table become features of one entity.

    Attributes:
        table: The table as ``schema.table`` (``public.merchants``), or ``table`` alone
            to match it in any schema. A change event's ``source.schema`` and
            ``source.table`` choose the mapping; ``schema.table`` wins over ``table``.
        entity: The entity a row is about.
        key_column: The column that holds the entity's id, read from the record key
            or else from the row image.
        columns: Per column name, the feature it feeds and its dtype. Columns not
            listed are ignored (and reported once as extra fields).
    """

    table: Annotated[
        str, msgspec.Meta(min_length=1, max_length=257, pattern=r"^[^.\s]+(\.[^.\s]+)?$")
    ]
    entity: Name
    key_column: Column
    columns: Annotated[dict[Column, ColumnMapping], msgspec.Meta(min_length=1)]


class Stream(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A Kafka topic that ``scoregate ingest`` reads into the online store.

    Attributes:
        name: The stream's name; the ``source`` label of the ingest metrics.
        topic: The topic to consume. Records that fail their contract go to
            ``<topic>.dlq``.
        format: ``feature_update``: scoregate's feature-update CloudEvents (binary
            mode, ``ce_type = scoregate.features.updated``); ``debezium``: Debezium
            change events from the JSON converter, with or without the schema
            envelope, or flattened by ``ExtractNewRecordState``.
        schema_versions: The schema versions of feature-update events the stream
            accepts; an event of another version is dead-lettered as a schema change.
            Empty accepts any. Only for ``feature_update`` streams.
        owner: Who to tell when the stream's records stop fitting the registry, for
            features that name no owner of their own.
        tables: For ``debezium`` streams (at least one), how each table's rows become
            features; ``feature_update`` streams name their features in each event.
    """

    name: Name
    topic: Topic
    format: Literal["feature_update", "debezium"]
    schema_versions: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=list)
    owner: str = ""
    tables: list[TableMapping] = msgspec.field(default_factory=list)


class RegistryFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole registry file."""

    entities: Annotated[list[Entity], msgspec.Meta(min_length=1)]
    sources: list[Source] = msgspec.field(default_factory=list)
    features: list[Feature] = msgspec.field(default_factory=list)
    models: list[Model] = msgspec.field(default_factory=list)
    online_store: OnlineStoreSpec = msgspec.field(default_factory=OnlineStoreSpec)
    streams: list[Stream] = msgspec.field(default_factory=list)
    freshness: FreshnessSpec = msgspec.field(default_factory=FreshnessSpec)
