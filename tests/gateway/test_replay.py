"""Replay without a model server: output comparison, and the vector a replay sends.

The model client is a stand-in of ``ModelClient.infer`` that records its arguments and
answers with given outputs, or raises what it is given.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.decisions import DecisionRecord, StageTimings, Subject
from contracts.features import FeatureValue
from contracts.scoring import ModelRef, ScoreRequest
from gateway.deadline import Deadline
from gateway.model_client import ModelRejected
from gateway.registry import parse_registry
from gateway.replay import ReplayConflict, Replayer, outputs_match

REGISTRY = b"""
[[entities]]
name = "customer"
key = "customer_id"

[[features]]
name = "kyc_level"
entity = "customer"
dtype = "int64"
max_staleness_ms = 1000

[[models]]
name = "m"
version = "1"
subject = "customer"
endpoint = "http://model.invalid"
features = ["kyc_level"]
context = [{ name = "amount", dtype = "float64" }]
deadline_ms = 800
decision = { output = "p", rules = [{ label = "block", min = 0.5 }] }
"""


@pytest.mark.parametrize(
    ("original", "replayed", "match"),
    [
        ({"p": 0.5}, {"p": 0.5}, True),
        ({"p": 0.1 + 0.2}, {"p": 0.3}, True),
        ({"p": 1}, {"p": 1.0}, True),
        ({"p": [0.25, 0.75]}, {"p": [0.25, 0.75 + 1e-12]}, True),
        ({"p": 0.5}, {"p": 0.5001}, False),
        ({"p": 0.0}, {"p": 1e-11}, False),
        ({"p": [0.25, 0.75]}, {"p": [0.25]}, False),
        ({"p": 0.5}, {"p": 0.5, "q": 1}, False),
        ({"label": "a"}, {"label": "b"}, False),
        ({"label": "a"}, {"label": "a"}, True),
    ],
)
def test_outputs_match_numbers_to_a_relative_tolerance_and_keys_exactly(
    original: dict[str, Any], replayed: dict[str, Any], match: bool
) -> None:
    assert outputs_match(original, replayed) is match


class FakeModel:
    """``ModelClient.infer``: records each call and answers with ``outputs``."""

    def __init__(self, outputs: dict[str, Any] | Exception) -> None:
        self.outputs = outputs
        self.calls: list[tuple[str, list[Any], float, str | None]] = []

    async def infer(
        self, decision_id: str, vector: list[Any], deadline: Deadline, version: str | None = None
    ) -> dict[str, Any]:
        self.calls.append((decision_id, list(vector), deadline.budget_s, version))
        if isinstance(self.outputs, Exception):
            raise self.outputs
        return self.outputs


def record(
    features: dict[str, Any], model: str = "m", decision: str | None = "block"
) -> DecisionRecord:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    return DecisionRecord(
        decision_id="d-1",
        request_id="r-1",
        caller="scorer",
        model=ModelRef(name=model, version="1"),
        model_endpoint="http://model.invalid",
        registry_digest="0" * 16,
        subject=Subject(entity="customer", key="customer_id", id="c-1"),
        request=ScoreRequest(model=model, entities={"customer_id": "c-1"}),
        outputs={"p": 0.7},
        decision=decision,
        decision_rule="p>=0.5 (policy 1)",
        degraded=False,
        features={
            name: FeatureValue(value=value, status="fresh", source="online_store")
            for name, value in features.items()
        },
        lineage={},
        received_at=at,
        decided_at=at,
        timings=StageTimings(online_store_ms=0, sources_ms=0, model_ms=0, total_ms=0),
    )


def replayer(model: FakeModel) -> Replayer:
    return Replayer(parse_registry(REGISTRY), {"m": model})  # type: ignore[dict-item]


async def test_the_recorded_vector_is_sent_in_plan_order_under_the_recorded_version() -> None:
    model = FakeModel({"p": 0.7})
    result = await replayer(model).replay(record({"amount": 12.0, "kyc_level": 2}), None)
    assert model.calls == [("d-1", [2, 12.0], 0.8, "1")]
    assert result.match
    assert result.replayed.decision == "block"
    assert result.replayed.model == ModelRef(name="m", version="1")
    assert result.original.outputs == {"p": 0.7}


async def test_another_version_and_another_label_do_not_match() -> None:
    model = FakeModel({"p": 0.2})
    result = await replayer(model).replay(record({"kyc_level": 2, "amount": 1.0}), "2")
    assert model.calls[0][3] == "2"
    assert result.replayed.model.version == "2"
    assert (result.original.decision, result.replayed.decision) == ("block", None)
    assert not result.match


async def test_equal_labels_with_other_outputs_do_not_match() -> None:
    result = await replayer(FakeModel({"p": 0.9})).replay(
        record({"kyc_level": 2, "amount": 1.0}), None
    )
    assert result.replayed.decision == "block"
    assert not result.match


async def test_a_record_lacking_a_feature_the_model_takes_now_is_a_conflict() -> None:
    model = FakeModel({"p": 0.7})
    with pytest.raises(ReplayConflict) as caught:
        await replayer(model).replay(record({"kyc_level": 2}), None)
    assert caught.value.status_code == 409
    assert caught.value.field == "features"
    assert "amount" in caught.value.detail
    assert model.calls == []


async def test_a_model_no_longer_registered_is_a_conflict() -> None:
    with pytest.raises(ReplayConflict) as caught:
        await replayer(FakeModel({})).replay(record({}, model="gone"), None)
    assert caught.value.field == "model"


async def test_a_rejected_chosen_version_is_the_callers_conflict() -> None:
    rejected = ModelRejected("model m rejected the request (404): no version 9", field="model")
    with pytest.raises(ReplayConflict) as caught:
        await replayer(FakeModel(rejected)).replay(record({"kyc_level": 2, "amount": 1.0}), "9")
    assert caught.value.field == "model_version"
    assert "no version 9" in caught.value.detail


async def test_a_rejection_of_the_recorded_version_stays_the_models() -> None:
    rejected = ModelRejected("model m rejected the request (400): bad", field="model")
    with pytest.raises(ModelRejected):
        await replayer(FakeModel(rejected)).replay(record({"kyc_level": 2, "amount": 1.0}), None)


async def test_equal_outputs_under_another_label_do_not_match() -> None:
    # The registry's policy changed since: the same score is labelled otherwise now.
    recorded = record({"kyc_level": 2, "amount": 1.0}, decision="review")
    result = await replayer(FakeModel({"p": 0.7})).replay(recorded, None)
    assert result.replayed.outputs == result.original.outputs
    assert (result.original.decision, result.replayed.decision) == ("review", "block")
    assert not result.match
