"""PII masking: a keyed, comparable tag in place of the value, and only where declared."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.decisions import DecisionRecord, StageTimings, Subject
from contracts.features import FeatureValue
from contracts.scoring import ModelRef, ScoreRequest, ScoreResponse
from gateway.masking import PiiMasker

KEY = b"k" * 32
AT = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def masker() -> PiiMasker:
    return PiiMasker(KEY, frozenset({"email", "phone"}))


def test_the_tag_is_the_hmac_sha256_of_the_json_value(masker: PiiMasker) -> None:
    # HMAC-SHA256(key, b'"alice@example.com"'), first 12 hex digits.
    assert masker.mask("alice@example.com") == "***e2c2c7bbf870"


def test_equal_values_mask_alike_and_different_ones_do_not(masker: PiiMasker) -> None:
    assert masker.mask("a@x") == masker.mask("a@x")
    masks = {masker.mask(v) for v in ("a@x", "b@x", 1, "1", 1.5, True)}
    assert len(masks) == 6
    assert all(m is not None and m.startswith("***") and len(m) == 15 for m in masks)
    assert masker.mask(None) is None


def test_without_the_key_the_tag_cannot_be_reproduced(masker: PiiMasker) -> None:
    other = PiiMasker(b"another key", masker.pii)
    assert other.mask("a@x") != masker.mask("a@x")


def feature(value: object, status: str = "fresh") -> FeatureValue:
    return FeatureValue(value=value, status=status, source="online_store")  # type: ignore[arg-type]


def response(features: dict[str, FeatureValue]) -> ScoreResponse:
    return ScoreResponse(
        decision_id="d-1",
        request_id="r-1",
        model=ModelRef(name="m", version="1"),
        outputs={"p": 0.5},
        decision=None,
        degraded=False,
        features=features,
    )


def test_a_response_masks_only_pii_values_and_keeps_the_rest(masker: PiiMasker) -> None:
    original = response(
        {"email": feature("a@x"), "kyc_level": feature(2), "phone": feature(None, "default")}
    )
    masked = masker.response(original)
    assert masked.features["email"] == FeatureValue(
        value=masker.mask("a@x"), status="fresh", source="online_store"
    )
    assert masked.features["kyc_level"] == feature(2)
    assert masked.features["phone"].value is None
    assert masked.features["phone"].status == "default"
    assert masked.outputs == original.outputs
    # The unmasked original is left as it was.
    assert original.features["email"].value == "a@x"


def test_a_response_without_pii_features_is_returned_as_is(masker: PiiMasker) -> None:
    original = response({"kyc_level": feature(2)})
    assert masker.response(original) is original


def record(context: dict[str, object], features: dict[str, FeatureValue]) -> DecisionRecord:
    return DecisionRecord(
        decision_id="d-1",
        request_id="r-1",
        caller="scorer",
        model=ModelRef(name="m", version="1"),
        model_endpoint="http://model.invalid",
        registry_digest="0" * 16,
        subject=Subject(entity="customer", key="customer_id", id="c-1"),
        request=ScoreRequest(
            model="m",
            entities={"customer_id": "c-1"},
            context=context,  # type: ignore[arg-type]
        ),
        outputs={"p": 0.5},
        decision=None,
        decision_rule=None,
        degraded=False,
        features=features,
        lineage={},
        received_at=AT,
        decided_at=AT,
        timings=StageTimings(online_store_ms=0, sources_ms=0, model_ms=0, total_ms=0),
    )


def test_a_record_masks_pii_in_its_features_and_in_the_request_context(
    masker: PiiMasker,
) -> None:
    original = record(
        {"phone": "+44 20", "amount": 3.0},
        {"email": feature("a@x"), "phone": feature("+44 20", "request"), "amount": feature(3.0)},
    )
    masked = masker.record(original)
    assert masked.request.context == {"phone": masker.mask("+44 20"), "amount": 3.0}
    assert masked.features["phone"].value == masker.mask("+44 20")
    assert masked.features["email"].value == masker.mask("a@x")
    assert masked.features["amount"].value == 3.0
    assert masked.request.entities == original.request.entities
    assert masked.subject == original.subject
    assert original.request.context["phone"] == "+44 20"


def test_a_record_without_pii_features_is_returned_as_is(masker: PiiMasker) -> None:
    original = record({"amount": 3.0}, {"amount": feature(3.0)})
    assert masker.record(original) is original
