"""The answers a gateway keeps for retries: bounded in count and in age."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from contracts.features import FeatureValue
from contracts.scoring import ModelRef, ScoreResponse
from gateway.scoring import Answer, Asked, RecentAnswers
from tests.support.clock import ManualClock


def answer(request_id: str) -> ScoreResponse:
    return ScoreResponse(
        decision_id=f"d-{request_id}",
        request_id=request_id,
        model=ModelRef(name="fraud", version="1"),
        outputs={"score": [0.1], "label": [1]},
        decision="approve",
        degraded=False,
        features={
            "amount": FeatureValue(value=4.0, status="fresh", source="request"),
            "txn_count_30m": FeatureValue(
                value=2,
                status="fresh",
                source="online_store",
                event_time=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
                staleness_ms=1200,
            ),
            "kyc": FeatureValue(value=None, status="missing", source="default"),
        },
    )


ASKED = Asked("fraud", {"customer_id": "c-1"}, {"amount": 1.0})


def keep(recent: RecentAnswers, request_id: str, caller: str = "scorer") -> None:
    recent.put((caller, request_id), ASKED, ASKED.fingerprint(), Answer(answer(request_id)))


def test_an_answer_comes_back_as_it_was_under_its_caller_and_request_id() -> None:
    recent = RecentAnswers()
    keep(recent, "r-1")

    found = recent.get(("scorer", "r-1"))

    assert found is not None
    assert (found.response, found.asked, found.fingerprint) == (
        answer("r-1"),
        ASKED,
        ASKED.fingerprint(),
    )
    amount = found.response.features["amount"].value
    assert isinstance(amount, float)
    assert recent.get(("other", "r-1")) is None
    assert recent.get(("scorer", "r-2")) is None


def test_the_least_recently_used_answer_goes_first() -> None:
    recent = RecentAnswers(capacity=2)
    keep(recent, "r-1")
    keep(recent, "r-2")
    assert recent.get(("scorer", "r-1")) is not None

    keep(recent, "r-3")

    assert len(recent) == 2
    assert recent.get(("scorer", "r-2")) is None
    assert recent.get(("scorer", "r-1")) is not None
    assert recent.get(("scorer", "r-3")) is not None


def test_an_answer_ages_out() -> None:
    clock = ManualClock()
    recent = RecentAnswers(ttl_s=60.0, clock=clock)
    keep(recent, "r-1")
    clock.advance(59.0)
    assert recent.get(("scorer", "r-1")) is not None

    clock.advance(1.0)

    assert recent.get(("scorer", "r-1")) is None
    assert len(recent) == 0


def test_capacity_zero_keeps_nothing() -> None:
    recent = RecentAnswers(capacity=0)
    keep(recent, "r-1")

    assert recent.get(("scorer", "r-1")) is None
    assert len(recent) == 0


def test_an_answer_is_encoded_once_and_those_bytes_are_kept_and_sent() -> None:
    recent = RecentAnswers()
    scored = Answer(answer("r-1"))
    body = scored.encoded

    recent.put(("scorer", "r-1"), ASKED, ASKED.fingerprint(), scored)

    assert body == msgspec.json.encode(answer("r-1"))
    assert scored.encoded is body
    found = recent.get(("scorer", "r-1"))
    assert found is not None
    assert found.encoded is body


def test_an_answer_kept_as_json_is_sent_as_it_is_and_decoded_only_when_asked() -> None:
    body = msgspec.json.encode(answer("r-1"))
    kept = Answer(encoded=body)

    assert kept.encoded is body
    assert kept.response == answer("r-1")
    assert kept.response is kept.response


def test_an_answer_needs_its_response_or_its_json() -> None:
    with pytest.raises(ValueError, match="response or its JSON"):
        Answer()
