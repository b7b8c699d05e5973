"""The ``POST /score`` request and response."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from contracts.features import FeatureScalar, FeatureValue, Identifier

StalenessBound = Annotated[int, msgspec.Meta(ge=0)]
"""How old, in milliseconds, a stored value may be for one request to be served it."""

MAX_BOUNDED_FEATURES = 256
"""The most features one request's ``max_staleness_ms`` object may name."""

StalenessBounds = Annotated[
    dict[Identifier, StalenessBound], msgspec.Meta(max_length=MAX_BOUNDED_FEATURES)
]
"""A caller's staleness bound per stored feature, by feature name."""


class ScoreRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request to score one subject with one model.

    Attributes:
        model: The model's name in the registry.
        entities: Entity keys (``customer_id``) to ids.
        request_id: Makes retries safe: the same caller sending it again gets the
            first decision back.
        context: The request-time features the model declares, by name.
        max_staleness_ms: Fresher data than the registry's SLA, for this request:
            one bound in milliseconds for every stored feature of the model, or a
            bound per stored feature by name. A stored value older than the bound
            is treated as stale (fetched from its source, or served as its
            ``on_unavailable`` policy says). A bound only tightens the feature's
            SLA: the bound applied is the smaller of the two.
    """

    model: Identifier
    entities: dict[str, Identifier]
    request_id: Identifier | None = None
    context: dict[str, FeatureScalar] = msgspec.field(default_factory=dict)
    max_staleness_ms: StalenessBound | StalenessBounds | None = None


class ModelRef(msgspec.Struct, frozen=True, kw_only=True):
    """A model by name and version."""

    name: str
    version: str


class ScoreResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The decision, the model outputs and every feature the model saw."""

    decision_id: str
    request_id: str
    model: ModelRef
    outputs: dict[str, Any]
    decision: str | None
    degraded: bool
    features: dict[str, FeatureValue]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every 4xx/5xx answer: what went wrong and, where one is to blame, which field."""

    status_code: int
    detail: str
    field: str | None = None
    extra: dict[str, Any] | None = None
