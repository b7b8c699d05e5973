"""The field a validation error blames, found by walking the body with its type."""

from __future__ import annotations

from typing import Annotated

import msgspec

from contracts.features import PushRequest
from contracts.scoring import ScoreRequest
from gateway.field_paths import misfit


class Item(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    size: Annotated[int, msgspec.Meta(ge=0)] = 0


class Order(msgspec.Struct, forbid_unknown_fields=True):
    items: list[Item]
    notes: dict[str, str] = {}


def test_a_bad_dict_value_is_named_by_its_key() -> None:
    body = {"model": "fraud", "entities": {}, "context": {"card_present": False, "amount": [1]}}
    assert misfit(body, ScoreRequest) == ["context", "amount"]


def test_unknown_and_missing_fields_are_named_where_they_are() -> None:
    push = {
        "entities": {"customer_id": "c-1"},
        "features": {"txn_count_30m": 1},
        "event_time": "2026-01-01T00:00:00Z",
        "lineage": {"source_system": "s", "source_ref": "r", "surprise": 1},
    }
    assert misfit(push, PushRequest) == ["lineage", "surprise"]
    assert misfit({"entities": {"customer_id": "c-1"}}, ScoreRequest) == ["model"]


def test_list_items_are_named_by_position_and_constraints_are_checked() -> None:
    assert misfit({"items": [{"name": "a"}, {"name": "b", "size": -1}]}, Order) == [
        "items",
        "1",
        "size",
    ]
    assert misfit({"items": [{"name": "a"}, {}]}, Order) == ["items", "1", "name"]
    assert misfit({"items": [], "notes": {"k": 3}}, Order) == ["notes", "k"]


def test_the_first_misfit_in_the_order_sent_is_blamed() -> None:
    body = {"notes": {"k": 3}, "items": "not a list"}
    assert misfit(body, Order) == ["notes", "k"]


def test_strings_are_not_coerced_as_json_decoding_does_not() -> None:
    assert misfit({"items": [{"name": "a", "size": "3"}]}, Order) == ["items", "0", "size"]


def test_a_body_that_fits_or_fails_as_a_whole_blames_no_field() -> None:
    assert misfit({"items": []}, Order) == []
    assert misfit([1, 2], ScoreRequest) == []
    assert misfit("text", Order) == []
