"""Scoring's pure rules: the decision policy, the request checks, fingerprints, refusals.

The checks run before any dependency is called, so a scorer whose assembler, models
and audit store are absent shows them: a request that fails a check never gets further.
"""

from __future__ import annotations

from typing import Any

import pytest

from contracts.registry import DecisionPolicy, DecisionRule
from contracts.scoring import ScoreRequest
from gateway.errors import BadRequest, Unprocessable
from gateway.registry import Registry, parse_registry
from gateway.scoring import Asked, Scorer, conflict, decide, refusal
from writeback.audit_store import RecordRefused

POLICY = DecisionPolicy(
    output="p",
    rules=[DecisionRule(label="block", min=0.9), DecisionRule(label="review", min=0.5)],
    version="7",
)


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ({"p": 0.95}, ("block", "p>=0.9 (policy 7)")),
        ({"p": 0.9}, ("block", "p>=0.9 (policy 7)")),
        ({"p": 0.5}, ("review", "p>=0.5 (policy 7)")),
        ({"p": 1}, ("block", "p>=0.9 (policy 7)")),
        ({"p": [0.6, 0.99]}, ("review", "p>=0.5 (policy 7)")),
        ({"p": 0.49}, (None, None)),
        ({"p": True}, (None, None)),
        ({"p": "0.99"}, (None, None)),
        ({"p": []}, (None, None)),
        ({"q": 0.99}, (None, None)),
    ],
)
def test_the_first_rule_reached_labels_the_decision(
    outputs: dict[str, Any], expected: tuple[str | None, str | None]
) -> None:
    assert decide(POLICY, outputs) == expected


def test_without_a_policy_there_is_no_label() -> None:
    assert decide(None, {"p": 0.99}) == (None, None)


def test_rules_are_taken_in_their_order_not_sorted() -> None:
    policy = DecisionPolicy(
        output="p", rules=[DecisionRule(label="low", min=0.1), DecisionRule(label="hi", min=0.9)]
    )
    assert decide(policy, {"p": 0.95}) == ("low", "p>=0.1 (policy 1)")


REGISTRY = b"""
[[entities]]
name = "customer"
key = "customer_id"
pattern = "^c-[0-9]{1,4}$"

[[entities]]
name = "merchant"
key = "merchant_id"
max_length = 8

[[features]]
name = "kyc_level"
entity = "customer"
dtype = "int64"
max_staleness_ms = 1000

[[features]]
name = "merchant_risk"
entity = "merchant"
dtype = "float64"
max_staleness_ms = 1000

[[models]]
name = "m"
version = "1"
subject = "customer"
endpoint = "http://model.invalid"
features = ["kyc_level", "merchant_risk"]
input = { layout = "columns" }
context = [
  { name = "amount", dtype = "float64" },
  { name = "channel", dtype = "string" },
]
"""


@pytest.fixture
def registry() -> Registry:
    return parse_registry(REGISTRY)


@pytest.fixture
def scorer(registry: Registry) -> Scorer:
    # No assembler, model or audit store: a request that passes the checks fails loudly.
    return Scorer(registry, None, {}, None)  # type: ignore[arg-type]


def request(**changes: Any) -> ScoreRequest:
    fields: dict[str, Any] = {
        "model": "m",
        "entities": {"customer_id": "c-1", "merchant_id": "m-1"},
        "context": {"amount": 3, "channel": "web"},
    }
    fields.update(changes)
    return ScoreRequest(**fields)


@pytest.mark.parametrize(
    ("changes", "field", "detail"),
    [
        ({"model": "other"}, "model", "unknown model 'other'"),
        ({"request_id": "r\x00"}, "request_id", "control characters"),
        ({"request_id": "r\x85"}, "request_id", "control characters"),
        ({"entities": {"customer_id": "c-1"}}, "entities.merchant_id", "missing entity key"),
        (
            {"entities": {"customer_id": "c-1", "merchant_id": "m-1", "shop_id": "s"}},
            "entities.shop_id",
            "does not use entity key 'shop_id'",
        ),
        (
            {"entities": {"customer_id": "c-12345", "merchant_id": "m-1"}},
            "entities.customer_id",
            "customer_id must match ^c-[0-9]{1,4}$",
        ),
        (
            {"entities": {"customer_id": "c-1", "merchant_id": "m-1234567"}},
            "entities.merchant_id",
            "merchant_id is longer than 8 characters",
        ),
        (
            {"entities": {"customer_id": "c-1", "merchant_id": "m\x1b"}},
            "entities.merchant_id",
            "merchant_id must not contain control characters",
        ),
        ({"context": {"amount": 3}}, "context.channel", "missing context feature 'channel'"),
        (
            {"context": {"amount": 3, "channel": "w", "tip": 1}},
            "context.tip",
            "declares no context feature 'tip'",
        ),
        (
            {"context": {"amount": "3", "channel": "w"}},
            "context.amount",
            "expected float64, got str",
        ),
        (
            {"context": {"amount": True, "channel": "w"}},
            "context.amount",
            "expected float64, got bool",
        ),
        (
            {"context": {"amount": 3, "channel": "w\x00b"}},
            "context.channel",
            "a NUL character cannot be stored",
        ),
    ],
)
async def test_a_request_that_does_not_fit_the_registry_is_a_400_naming_the_field(
    scorer: Scorer, changes: dict[str, Any], field: str, detail: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        await scorer.score(request(**changes), "caller")
    assert caught.value.status_code == 400
    assert caught.value.field == field
    assert detail in caught.value.detail


def test_context_values_are_coerced_to_their_declared_types(registry: Registry) -> None:
    values = Scorer._context(registry.plans["m"], {"amount": 3, "channel": "tab\there"})
    assert values == {"amount": 3.0, "channel": "tab\there"}
    assert isinstance(values["amount"], float)


def test_entity_ids_are_keyed_by_entity_name(scorer: Scorer, registry: Registry) -> None:
    ids = scorer._entity_ids(registry.plans["m"], {"merchant_id": "m-1", "customer_id": "c-1"})
    assert ids == {"customer": "c-1", "merchant": "m-1"}


def asked(**changes: Any) -> Asked:
    fields: dict[str, Any] = {
        "model": "m",
        "entities": {"customer_id": "c-1", "merchant_id": "m-1"},
        "context": {"amount": 120.0, "channel": "web"},
    }
    fields.update(changes)
    return Asked(**fields)


def test_the_fingerprint_ignores_order_and_int_float_spelling() -> None:
    base = asked()
    reordered = asked(
        entities={"merchant_id": "m-1", "customer_id": "c-1"},
        context={"channel": "web", "amount": 120.0},
    )
    assert base.fingerprint() == reordered.fingerprint()
    assert len(base.fingerprint()) == 32
    assert base.fingerprint() != asked(context={"amount": 120.5, "channel": "web"}).fingerprint()
    assert base.fingerprint() != asked(model="n").fingerprint()
    # Keys and values do not run together: ("ab", "c") is not ("a", "bc").
    assert asked(entities={"ab": "c"}).fingerprint() != asked(entities={"a": "bc"}).fingerprint()


def test_differences_name_every_field_that_differs_in_order() -> None:
    other = asked(
        model="n",
        entities={"customer_id": "c-2", "merchant_id": "m-1", "shop_id": "s"},
        context={"amount": 120, "channel": "app"},
    )
    assert asked().differences(other) == [
        "model",
        "entities.customer_id",
        "entities.shop_id",
        "context.channel",
    ]
    # 120 and 120.0 are one value; True and 1 are not.
    assert asked(context={"x": 1}).differences(asked(context={"x": True})) == ["context.x"]
    assert asked().differences(asked(context={"amount": 120, "channel": "web"})) == []


def test_a_conflict_is_a_409_naming_the_first_difference() -> None:
    assert conflict("r-1", asked(), asked()) is None
    refused = conflict("r-1", asked(), asked(context={"amount": 1.0, "channel": "x"}))
    assert refused is not None
    assert refused.status_code == 409
    assert refused.field == "context.amount"
    assert refused.extra == {"request_id": "r-1", "differs": ["context.amount", "context.channel"]}
    assert "context.amount, context.channel differ" in refused.detail
    single = conflict("r-1", asked(), asked(model="n"))
    assert single is not None
    assert single.detail.endswith("model differs")


@pytest.mark.parametrize(
    ("field", "named"),
    [
        ("request_id", "request_id"),
        ("request.context.channel", "context.channel"),
        ("request.entities.merchant_id", "entities.merchant_id"),
        ("subject.id", "entities.customer_id"),
        ("key", "entities.customer_id"),
    ],
)
def test_a_refused_value_the_caller_sent_is_a_400_naming_the_request_field(
    field: str, named: str
) -> None:
    answer = refusal(RecordRefused(field, "holds a NUL"), "customer_id")
    assert isinstance(answer, BadRequest)
    assert answer.field == named
    assert answer.detail == f"{named}: holds a NUL"


@pytest.mark.parametrize("field", ["lineage.lin_1.source_ref", None])
def test_a_refused_value_the_gateway_gathered_is_a_422(field: str | None) -> None:
    answer = refusal(RecordRefused(field, "too long"), "customer_id")
    assert isinstance(answer, Unprocessable)
    assert answer.status_code == 422
    assert answer.field is None
    assert answer.extra == (None if field is None else {"record_field": field})
