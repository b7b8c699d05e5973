"""The public schemas keep the released contract, and the exported files are current."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts.compatibility import JSONObject
from contracts.schemas import (
    ReleaseError,
    committed_schemas,
    contract_breaks,
    current_schemas,
    describe_breaks,
    normalised,
    read_schemas,
    release,
    released_schemas,
    stale_schemas,
    write_schemas,
)
from contracts.scoring import ScoreRequest
from contracts.version import CONTRACT_VERSION

REGENERATE = "run: python -m contracts.schemas"


def test_current_schemas_keep_the_released_contract() -> None:
    baseline = released_schemas()
    assert baseline, (
        f"no baseline of contract version {CONTRACT_VERSION} in contracts/released/; "
        "run: python -m contracts.schemas --release"
    )
    breaks = contract_breaks(baseline, current_schemas())
    assert not breaks, describe_breaks(breaks)


def test_committed_schemas_are_current() -> None:
    stale = stale_schemas(committed_schemas(), current_schemas())
    assert not stale, f"contracts/schemas/ is out of date for {', '.join(stale)}; {REGENERATE}"


def _reindented(schema: Any) -> Any:
    """The same schema with descriptions laid out as another msgspec release does."""
    if isinstance(schema, list):
        return [_reindented(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out: JSONObject = {}
    for key, value in schema.items():
        if key == "description" and isinstance(value, str):
            out[key] = "\n    ".join(value.split(" "))
        elif key in ("properties", "$defs"):
            out[key] = {name: _reindented(sub) for name, sub in value.items()}
        else:
            out[key] = _reindented(value)
    return out


def test_description_layout_does_not_make_a_schema_stale_but_its_words_do() -> None:
    current = current_schemas()
    reindented = {name: _reindented(schema) for name, schema in current.items()}
    assert reindented != current
    assert stale_schemas(reindented, current) == []

    reworded = copy.deepcopy(current)
    reworded["score-request"]["$defs"]["ScoreRequest"]["description"] = "Something else."
    assert stale_schemas(reworded, current) == ["score-request"]


def test_a_changed_or_missing_schema_file_is_stale() -> None:
    current = current_schemas()
    changed = copy.deepcopy(current)
    changed["error"]["$defs"]["ErrorBody"]["properties"]["detail"] = {"type": "integer"}
    del changed["verify-report"]
    assert stale_schemas(changed, current) == ["error", "verify-report"]


def test_a_registry_field_named_description_is_a_field_not_a_description() -> None:
    schema = current_schemas()["registry-file"]
    entity = normalised(schema)["$defs"]["Entity"]
    assert (
        entity["properties"]["description"]
        == schema["$defs"]["Entity"]["properties"]["description"]
    )


def _without_field(struct: type[msgspec.Struct], name: str) -> JSONObject:
    """The schema of ``struct`` with one field taken out, as if it were deleted in code."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for info in msgspec.structs.fields(struct):
        if info.name == name:
            continue
        if info.default is not msgspec.NODEFAULT:
            fields.append((info.name, info.type, info.default))
        elif info.default_factory is not msgspec.NODEFAULT:
            fields.append(
                (info.name, info.type, msgspec.field(default_factory=info.default_factory))
            )
        else:
            fields.append((info.name, info.type))
    config = struct.__struct_config__
    variant = msgspec.defstruct(
        struct.__name__,
        fields,
        frozen=config.frozen,
        kw_only=True,
        forbid_unknown_fields=config.forbid_unknown_fields,
    )
    return msgspec.json.schema(variant)


def test_removing_a_field_of_score_request_breaks_the_contract() -> None:
    schemas = released_schemas(1)
    schemas["score-request"] = _without_field(ScoreRequest, "request_id")
    breaks = contract_breaks(released_schemas(1), schemas)
    assert breaks == {"score-request": ["ScoreRequest.request_id: field removed or renamed"]}
    message = describe_breaks(breaks)
    assert "score-request (sent by callers): ScoreRequest.request_id" in message
    assert f"CONTRACT_VERSION = {CONTRACT_VERSION + 1}" in message
    assert "python -m contracts.schemas --release" in message


def test_a_removed_public_type_breaks_and_a_new_one_does_not() -> None:
    schemas = released_schemas(1)
    del schemas["verify-report"]
    schemas["brand-new"] = {"type": "string"}
    assert contract_breaks(released_schemas(1), schemas) == {
        "verify-report": ["public type removed or renamed"]
    }


@pytest.fixture
def released_dir(tmp_path: Path) -> Path:
    """A copy of the real baselines, for release() to write into."""
    write_schemas(tmp_path / "1", released_schemas(1))
    return tmp_path


def _with_optional_field(schemas: dict[str, JSONObject]) -> dict[str, JSONObject]:
    out = copy.deepcopy(schemas)
    out["score-request"]["$defs"]["ScoreRequest"]["properties"]["tenant"] = {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "default": None,
    }
    return out


def test_release_refreshes_the_baseline_with_compatible_changes(released_dir: Path) -> None:
    schemas = _with_optional_field(released_schemas(1))
    assert release(1, released_dir, schemas) == released_dir / "1"
    assert read_schemas(released_dir / "1") == schemas


def test_release_refuses_a_breaking_change_within_a_major_version(released_dir: Path) -> None:
    before = read_schemas(released_dir / "1")
    schemas = released_schemas(1)
    schemas["score-request"] = _without_field(ScoreRequest, "request_id")
    with pytest.raises(ReleaseError, match=r"ScoreRequest\.request_id: field removed"):
        release(1, released_dir, schemas)
    assert read_schemas(released_dir / "1") == before


def test_a_breaking_change_is_released_as_the_next_major_version(released_dir: Path) -> None:
    schemas = released_schemas(1)
    schemas["score-request"] = _without_field(ScoreRequest, "request_id")
    with pytest.raises(ReleaseError, match="next is 2"):
        release(3, released_dir, schemas)
    release(2, released_dir, schemas)
    assert read_schemas(released_dir / "2") == schemas
    assert contract_breaks(read_schemas(released_dir / "2"), schemas) == {}
    assert read_schemas(released_dir / "1") == released_schemas(1)
