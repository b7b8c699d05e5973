"""Masking of PII features in what callers without the ``pii`` scope see.

A masked value is ``"***"`` plus a keyed hash of the value (HMAC-SHA256 with the
deployment's PII key), so equal values stay comparable across decisions without
revealing them, and nobody without the key can test guesses against the hash.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import msgspec

from contracts.decisions import DecisionRecord
from contracts.features import FeatureScalar, FeatureValue
from contracts.scoring import ScoreResponse

_encode = msgspec.json.Encoder().encode


class PiiMasker:
    """Masks the values of the features (and context fields) classified ``pii``."""

    def __init__(self, key: bytes, pii: frozenset[str]) -> None:
        self._key = key
        self.pii = pii

    def mask(self, value: FeatureScalar | None) -> str | None:
        """``***`` and the first 12 hex digits of the value's keyed hash."""
        if value is None:
            return None
        tag = hmac.new(self._key, _encode(value), hashlib.sha256).hexdigest()[:12]
        return f"***{tag}"

    def _features(self, features: Mapping[str, FeatureValue]) -> dict[str, FeatureValue]:
        return {
            name: msgspec.structs.replace(value, value=self.mask(value.value))
            if name in self.pii
            else value
            for name, value in features.items()
        }

    def response(self, response: ScoreResponse) -> ScoreResponse:
        """A score response with PII feature values masked."""
        if not self.pii.intersection(response.features):
            return response
        return msgspec.structs.replace(response, features=self._features(response.features))

    def record(self, record: DecisionRecord) -> DecisionRecord:
        """A decision record with PII values masked in its features and request context."""
        if not self.pii.intersection(record.features):
            return record
        context = {
            name: self.mask(value) if name in self.pii else value
            for name, value in record.request.context.items()
        }
        request = msgspec.structs.replace(record.request, context=context)
        return msgspec.structs.replace(
            record, features=self._features(record.features), request=request
        )
