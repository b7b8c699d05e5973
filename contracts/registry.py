"""The registry file: entities, source APIs, features and models.

Unknown keys in the file are errors, not ignored (``forbid_unknown_fields``).

The file is TOML; it decodes into these Structs at start-up, and the same shape is
served at ``GET /registry``. Cross-references (a feature's source, a model's
features) are checked by the gateway when it loads the file.
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
    """

    name: Name
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    owner: str
    timeout_ms: Millis = 200
    compliance: Classification = "internal"
    event_time_field: str = "event_time"
    ref_field: str | None = None
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = msgspec.field(default_factory=BreakerPolicy)


class Feature(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A feature: its entity, type, freshness SLA, fallback source and failure policy.

    Attributes:
        include_in_events: Whether its value travels in outcome events; by default
            every feature's does except those classified ``pii``.
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
            named inputs).
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


class RegistryFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole registry file."""

    entities: Annotated[list[Entity], msgspec.Meta(min_length=1)]
    sources: list[Source] = msgspec.field(default_factory=list)
    features: list[Feature] = msgspec.field(default_factory=list)
    models: list[Model] = msgspec.field(default_factory=list)
    online_store: OnlineStoreSpec = msgspec.field(default_factory=OnlineStoreSpec)
