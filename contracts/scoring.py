"""The ``POST /score`` request and response."""

from __future__ import annotations

from typing import Any

import msgspec

from contracts.features import FeatureScalar, FeatureValue, Identifier


class ScoreRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request to score one subject with one model.

    Attributes:
        model: The model's name in the registry.
        entities: Entity keys (``customer_id``) to ids.
        request_id: Makes retries safe: the same caller sending it again gets the
            first decision back.
        context: The request-time features the model declares, by name.
    """

    model: Identifier
    entities: dict[str, Identifier]
    request_id: Identifier | None = None
    context: dict[str, FeatureScalar] = msgspec.field(default_factory=dict)


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
