"""Field paths of validation errors, as msgspec writes them, made dotted."""

from __future__ import annotations

from contracts.features import PushRequest
from contracts.scoring import ScoreRequest
from gateway.app import _resolve


def test_a_dict_value_is_named_by_its_key_in_either_form() -> None:
    body = {"context": {"card_present": False, "amount": [1]}}
    assert _resolve("context[...]", body, ScoreRequest) == ["context", "amount"]
    assert _resolve("context['amount']", body, ScoreRequest) == ["context", "amount"]


def test_nested_fields_and_indexes_are_dotted() -> None:
    body = {"lineage": {"source_system": "s"}}
    assert _resolve("lineage", body, PushRequest) == ["lineage"]
    assert _resolve("items[2].name", None, None) == ["items", "2", "name"]


def test_an_unresolvable_key_leaves_the_dict_named() -> None:
    assert _resolve("context[...]", {"context": "not a dict"}, ScoreRequest) == ["context"]
    assert _resolve("context[...]", None, None) == ["context"]
