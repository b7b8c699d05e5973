"""The exported JSON Schemas are current, and no change breaks an existing client."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from contracts.schemas import breaking_changes, committed_schemas, current_schemas


def test_committed_schemas_are_current() -> None:
    committed = committed_schemas()
    current = current_schemas()
    assert set(committed) == set(current), "run: python -m contracts.schemas"
    for name, schema in current.items():
        assert committed[name] == schema, f"{name} changed; run: python -m contracts.schemas"


@pytest.mark.parametrize("name", sorted(current_schemas()))
def test_no_breaking_change_against_committed(name: str) -> None:
    committed = committed_schemas()
    assert breaking_changes(committed[name], current_schemas()[name]) == []


def _score_request() -> dict[str, Any]:
    return copy.deepcopy(current_schemas()["score-request"])


def test_removed_field_is_breaking() -> None:
    old = _score_request()
    new = _score_request()
    del new["$defs"]["ScoreRequest"]["properties"]["request_id"]
    assert breaking_changes(old, new) == ["ScoreRequest.request_id: field removed or renamed"]


def test_renamed_field_is_breaking() -> None:
    old = _score_request()
    new = _score_request()
    props = new["$defs"]["ScoreRequest"]["properties"]
    props["model_name"] = props.pop("model")
    new["$defs"]["ScoreRequest"]["required"] = ["model_name", "entities"]
    problems = breaking_changes(old, new)
    assert "ScoreRequest.model: field removed or renamed" in problems
    assert "ScoreRequest.model_name: new required field" in problems


def test_changed_type_is_breaking() -> None:
    old = _score_request()
    new = _score_request()
    new["$defs"]["ScoreRequest"]["properties"]["model"] = {"type": "integer"}
    assert breaking_changes(old, new) == ["ScoreRequest.model: type changed"]


def test_new_required_field_is_breaking() -> None:
    old = _score_request()
    new = _score_request()
    new["$defs"]["ScoreRequest"]["properties"]["tenant"] = {"type": "string"}
    new["$defs"]["ScoreRequest"]["required"].append("tenant")
    assert breaking_changes(old, new) == ["ScoreRequest.tenant: new required field"]


def test_new_optional_field_and_docs_are_not_breaking() -> None:
    old = _score_request()
    new = _score_request()
    definition = new["$defs"]["ScoreRequest"]
    definition["properties"]["tenant"] = {"type": "string"}
    definition["description"] = "reworded"
    definition["properties"]["model"]["description"] = "the model's name"
    assert breaking_changes(old, new) == []


def test_removed_type_is_breaking() -> None:
    old = current_schemas()["score-response"]
    new = copy.deepcopy(old)
    del new["$defs"]["ModelRef"]
    assert "ModelRef: type removed or renamed" in breaking_changes(old, new)
