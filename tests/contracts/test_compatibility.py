"""The compatibility rule on hand-made schema pairs: one per kind of break and non-break."""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

import msgspec
import pytest

from contracts.compatibility import Direction, JSONObject, breaking_changes

SENT, RECEIVED = Direction.SENT, Direction.RECEIVED

STRING: JSONObject = {"type": "string"}
NULLABLE_STRING: JSONObject = {"anyOf": [{"type": "string"}, {"type": "null"}]}


def doc(
    properties: dict[str, JSONObject],
    required: tuple[str, ...] = ("a",),
    *,
    closed: bool = True,
    name: str = "Thing",
    description: str = "A thing.",
    extra_defs: dict[str, JSONObject] | None = None,
) -> JSONObject:
    """A schema document shaped like msgspec's: a $ref to one object in $defs."""
    definition: JSONObject = {
        "title": name,
        "description": description,
        "type": "object",
        "properties": copy.deepcopy(properties),
        "required": list(required),
    }
    if closed:
        definition["additionalProperties"] = False
    return {"$ref": f"#/$defs/{name}", "$defs": {name: definition, **(extra_defs or {})}}


def field(a: JSONObject, **others: JSONObject) -> dict[str, JSONObject]:
    return {"a": a, **others}


INNER_OLD = {
    "Inner": {"type": "object", "properties": {"x": STRING, "y": STRING}, "required": ["x"]}
}
INNER_NEW = {"Inner": {"type": "object", "properties": {"x": STRING}, "required": ["x"]}}
REF_INNER = {"$ref": "#/$defs/Inner"}


def union(*variants: str, name_prefix: str = "") -> JSONObject:
    """A tagged union of objects with a ``kind`` tag, like msgspec's ``tag=True`` Structs."""
    defs = {
        f"{name_prefix}{v.title()}": {
            "type": "object",
            "properties": {"kind": {"enum": [v]}, "at": STRING},
            "required": ["kind", "at"],
        }
        for v in variants
    }
    return {
        "anyOf": [{"$ref": f"#/$defs/{name}"} for name in defs],
        "discriminator": {
            "propertyName": "kind",
            "mapping": {v: f"#/$defs/{name_prefix}{v.title()}" for v in variants},
        },
        "$defs": defs,
    }


SENT_BREAKS: dict[str, tuple[JSONObject, JSONObject, list[str]]] = {
    "removed field": (
        doc(field(STRING, b=STRING)),
        doc(field(STRING)),
        ["Thing.b: field removed or renamed"],
    ),
    "renamed field": (
        doc(field(STRING)),
        doc({"c": STRING}, ("c",)),
        ["Thing.a: field removed or renamed", "Thing.c: new required field"],
    ),
    "changed type": (
        doc(field(STRING)),
        doc(field({"type": "integer"})),
        ["Thing.a: type changed (string to integer)"],
    ),
    "new required field": (
        doc(field(STRING)),
        doc(field(STRING, n=STRING), ("a", "n")),
        ["Thing.n: new required field"],
    ),
    "optional field made required": (
        doc(field(STRING, b=STRING)),
        doc(field(STRING, b=STRING), ("a", "b")),
        ["Thing.b: became required"],
    ),
    "null no longer taken": (
        doc(field(NULLABLE_STRING)),
        doc(field(STRING)),
        ["Thing.a: type changed (string | null to string)"],
    ),
    "number narrowed to integer": (
        doc(field({"type": "number"})),
        doc(field({"type": "integer"})),
        ["Thing.a: type changed (number to integer)"],
    ),
    "free string narrowed to an enum": (
        doc(field(STRING)),
        doc(field({"enum": ["x", "y"]})),
        ["Thing.a: type changed (string to one of ['x', 'y'])"],
    ),
    "narrowed enum": (
        doc(field({"enum": ["x", "y", "z"]})),
        doc(field({"enum": ["x", "y"]})),
        ["Thing.a: no longer accepts 'z' (enum narrowed)"],
    ),
    "enum value the new pattern refuses": (
        doc(field({"enum": ["x", "y"]})),
        doc(field({"type": "string", "pattern": "^x$"})),
        ["Thing.a: no longer accepts 'y' (enum narrowed)"],
    ),
    "lower maxLength": (
        doc(field({"type": "string", "maxLength": 128})),
        doc(field({"type": "string", "maxLength": 64})),
        ["Thing.a: maxLength 128 to 64 (narrows what callers may send)"],
    ),
    "higher minLength": (
        doc(field({"type": "string", "minLength": 0})),
        doc(field({"type": "string", "minLength": 1})),
        ["Thing.a: minLength 0 to 1 (narrows what callers may send)"],
    ),
    "new pattern": (
        doc(field(STRING)),
        doc(field({"type": "string", "pattern": "^[a-z]+$"})),
        ["Thing.a: pattern none to '^[a-z]+$' (narrows what callers may send)"],
    ),
    "changed pattern": (
        doc(field({"type": "string", "pattern": "^[a-z]+$"})),
        doc(field({"type": "string", "pattern": "^[a-z0-9]+$"})),
        ["Thing.a: pattern '^[a-z]+$' to '^[a-z0-9]+$' (narrows what callers may send)"],
    ),
    "new format": (
        doc(field(STRING)),
        doc(field({"type": "string", "format": "date-time"})),
        ["Thing.a: format none to 'date-time' (narrows what callers may send)"],
    ),
    "higher minimum": (
        doc(field({"type": "integer", "minimum": 0})),
        doc(field({"type": "integer", "minimum": 1})),
        ["Thing.a: lower bound >= 0 to >= 1 (narrows what callers may send)"],
    ),
    "lower maximum": (
        doc(field({"type": "integer", "maximum": 600000})),
        doc(field({"type": "integer", "maximum": 60000})),
        ["Thing.a: upper bound <= 600000 to <= 60000 (narrows what callers may send)"],
    ),
    "exclusive where inclusive was": (
        doc(field({"type": "number", "maximum": 1})),
        doc(field({"type": "number", "exclusiveMaximum": 1})),
        ["Thing.a: upper bound <= 1 to < 1 (narrows what callers may send)"],
    ),
    "new range": (
        doc(field({"type": "number"})),
        doc(field({"type": "number", "minimum": 0})),
        ["Thing.a: lower bound none to >= 0 (narrows what callers may send)"],
    ),
    "new multipleOf": (
        doc(field({"type": "integer"})),
        doc(field({"type": "integer", "multipleOf": 5})),
        ["Thing.a: multipleOf none to 5 (narrows what callers may send)"],
    ),
    "more items needed": (
        doc(field({"type": "array", "items": STRING})),
        doc(field({"type": "array", "items": STRING, "minItems": 1})),
        ["Thing.a: minItems none to 1 (narrows what callers may send)"],
    ),
    "items made unique": (
        doc(field({"type": "array", "items": STRING})),
        doc(field({"type": "array", "items": STRING, "uniqueItems": True})),
        ["Thing.a: uniqueItems none to True (narrows what callers may send)"],
    ),
    "array items narrowed": (
        doc(field({"type": "array", "items": STRING})),
        doc(field({"type": "array", "items": {"type": "string", "maxLength": 5}})),
        ["Thing.a[]: maxLength none to 5 (narrows what callers may send)"],
    ),
    "dict values narrowed": (
        doc(field({"type": "object", "additionalProperties": NULLABLE_STRING})),
        doc(field({"type": "object", "additionalProperties": STRING})),
        ["Thing.a{}: type changed (string | null to string)"],
    ),
    "fewer keys allowed in a dict": (
        doc(field({"type": "object", "additionalProperties": STRING})),
        doc(field({"type": "object", "additionalProperties": STRING, "maxProperties": 8})),
        ["Thing.a: maxProperties none to 8 (narrows what callers may send)"],
    ),
    "unknown keys now refused": (
        doc(field(STRING), closed=False),
        doc(field(STRING)),
        ["Thing: no longer accepts other keys (additionalProperties)"],
    ),
    "changed default": (
        doc(field(STRING, t={"type": "integer", "default": 200})),
        doc(field(STRING, t={"type": "integer", "default": 100})),
        ["Thing.t: default 200 to 100 (callers that leave it out get another value)"],
    ),
    "field of a nested type removed": (
        doc(field(REF_INNER), extra_defs=INNER_OLD),
        doc(field(REF_INNER), extra_defs=INNER_NEW),
        ["Thing.a.y: field removed or renamed"],
    ),
    "variant of a tagged union dropped": (
        union("made", "rolled_back"),
        union("made"),
        ["Rolled_Back: variant kind='rolled_back' no longer accepted (union narrowed)"],
    ),
    "a keyword the rule does not interpret changed": (
        doc(field({"type": "array", "prefixItems": [STRING, STRING]})),
        doc(field({"type": "array", "prefixItems": [STRING]})),
        [
            "Thing.a: prefixItems changed from [{'type': 'string'}, {'type': 'string'}]"
            " to [{'type': 'string'}]"
        ],
    ),
}

SENT_COMPATIBLE: dict[str, tuple[JSONObject, JSONObject]] = {
    "new optional field": (doc(field(STRING)), doc(field(STRING, n=NULLABLE_STRING))),
    "reworded descriptions, renamed $defs entry": (
        doc(field(dict(STRING, description="old words"))),
        doc(field(dict(STRING, description="new words")), name="Renamed", description="Other."),
    ),
    "widened enum": (doc(field({"enum": ["x"]})), doc(field({"enum": ["x", "y"]}))),
    "enum widened to a free string": (doc(field({"enum": ["x"]})), doc(field(STRING))),
    "looser bounds": (
        doc(field({"type": "string", "maxLength": 64, "pattern": "^a", "minLength": 2})),
        doc(field({"type": "string", "maxLength": 128, "minLength": 1})),
    ),
    "looser range": (
        doc(field({"type": "integer", "exclusiveMinimum": 0, "maximum": 10})),
        doc(field({"type": "integer", "minimum": 1, "exclusiveMaximum": 100})),
    ),
    "required field made optional": (doc(field(STRING)), doc(field(STRING), ())),
    "integer widened to number": (
        doc(field({"type": "integer"})),
        doc(field({"type": "number"})),
    ),
    "null now taken": (doc(field(STRING)), doc(field(NULLABLE_STRING))),
    "unknown keys now taken": (doc(field(STRING)), doc(field(STRING), closed=False)),
    "new variant of a tagged union": (union("made"), union("made", "rolled_back")),
    "anything now taken": (doc(field(STRING)), doc(field({}))),
}

RECEIVED_BREAKS: dict[str, tuple[JSONObject, JSONObject, list[str]]] = {
    "removed field": (
        doc(field(STRING, b=NULLABLE_STRING), closed=False),
        doc(field(STRING), closed=False),
        ["Thing.b: field removed or renamed"],
    ),
    "renamed field": (
        doc(field(STRING), closed=False),
        doc({"c": STRING}, ("c",), closed=False),
        ["Thing.a: field removed or renamed"],
    ),
    "field no longer always present": (
        doc(field(STRING), closed=False),
        doc(field(STRING), (), closed=False),
        ["Thing.a: may now be missing (was required)"],
    ),
    "changed type": (
        doc(field({"type": "integer"})),
        doc(field(STRING)),
        ["Thing.a: type changed (integer to string)"],
    ),
    "null may now come": (
        doc(field(STRING)),
        doc(field(NULLABLE_STRING)),
        ["Thing.a: type changed (string to string | null)"],
    ),
    "integer widened to number": (
        doc(field({"type": "integer"})),
        doc(field({"type": "number"})),
        ["Thing.a: type changed (integer to number)"],
    ),
    "enum widened to a free string": (
        doc(field({"enum": ["x"]})),
        doc(field(STRING)),
        ["Thing.a: type changed (one of ['x'] to string)"],
    ),
    "widened enum": (
        doc(field({"enum": ["fresh", "stale"]})),
        doc(field({"enum": ["fresh", "stale", "expired"]})),
        ["Thing.a: may now be 'expired', a value clients do not know (enum widened)"],
    ),
    "new variant of a tagged union": (
        union("made"),
        union("made", "rolled_back"),
        ["Rolled_Back: new variant kind='rolled_back', which clients do not know (union widened)"],
    ),
    "higher maxLength": (
        doc(field({"type": "string", "maxLength": 64})),
        doc(field({"type": "string", "maxLength": 128})),
        ["Thing.a: maxLength 64 to 128 (widens what callers receive)"],
    ),
    "pattern dropped": (
        doc(field({"type": "string", "pattern": "^[0-9a-f]{32}$"})),
        doc(field(STRING)),
        ["Thing.a: pattern '^[0-9a-f]{32}$' to none (widens what callers receive)"],
    ),
    "lower minimum": (
        doc(field({"type": "number", "minimum": 0})),
        doc(field({"type": "number"})),
        ["Thing.a: lower bound >= 0 to none (widens what callers receive)"],
    ),
    "dict values widened": (
        doc(field({"type": "object", "additionalProperties": STRING})),
        doc(field({"type": "object"})),
        ["Thing.a{}: type changed (string to any)"],
    ),
    "field of a nested type changed": (
        doc(field(REF_INNER), extra_defs=INNER_OLD),
        doc(
            field(REF_INNER),
            extra_defs={
                "Inner": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}, "y": STRING},
                    "required": ["x"],
                }
            },
        ),
        ["Thing.a.x: type changed (string to integer)"],
    ),
}

RECEIVED_COMPATIBLE: dict[str, tuple[JSONObject, JSONObject]] = {
    "new optional field": (
        doc(field(STRING), closed=False),
        doc(field(STRING, n=NULLABLE_STRING), closed=False),
    ),
    "new required field": (
        doc(field(STRING), closed=False),
        doc(field(STRING, n=STRING), ("a", "n"), closed=False),
    ),
    "new field where the released object was closed": (
        doc(field(STRING)),
        doc(field(STRING, n=STRING)),
    ),
    "reworded descriptions, renamed $defs entry, changed default": (
        doc(field(STRING, t={"type": "integer", "default": 1, "description": "a"}), closed=False),
        doc(
            field(STRING, t={"type": "integer", "default": 2, "description": "b"}),
            closed=False,
            name="Renamed",
        ),
    ),
    "narrowed enum": (doc(field({"enum": ["x", "y"]})), doc(field({"enum": ["x"]}))),
    "tighter bounds": (
        doc(field({"type": "string", "maxLength": 128})),
        doc(field({"type": "string", "maxLength": 64, "pattern": "^a"})),
    ),
    "null no longer comes": (doc(field(NULLABLE_STRING)), doc(field(STRING))),
    "optional field made required": (doc(field(STRING), ()), doc(field(STRING))),
    "variant of a tagged union dropped": (union("made", "rolled_back"), union("made")),
}


@pytest.mark.parametrize(("old", "new", "expected"), SENT_BREAKS.values(), ids=SENT_BREAKS)
def test_breaks_what_callers_send(old: JSONObject, new: JSONObject, expected: list[str]) -> None:
    assert breaking_changes(old, new, SENT) == expected


@pytest.mark.parametrize(("old", "new"), SENT_COMPATIBLE.values(), ids=SENT_COMPATIBLE)
def test_keeps_what_callers_send(old: JSONObject, new: JSONObject) -> None:
    assert breaking_changes(old, new, SENT) == []


@pytest.mark.parametrize(("old", "new", "expected"), RECEIVED_BREAKS.values(), ids=RECEIVED_BREAKS)
def test_breaks_what_callers_receive(old: JSONObject, new: JSONObject, expected: list[str]) -> None:
    assert breaking_changes(old, new, RECEIVED) == expected


@pytest.mark.parametrize(("old", "new"), RECEIVED_COMPATIBLE.values(), ids=RECEIVED_COMPATIBLE)
def test_keeps_what_callers_receive(old: JSONObject, new: JSONObject) -> None:
    assert breaking_changes(old, new, RECEIVED) == []


def test_a_description_never_decides_even_inside_a_field_named_description() -> None:
    old = doc(field(STRING, description=dict(STRING, description="  the\n    words ")))
    new = doc(field(STRING, description=dict(STRING, description="other words")))
    for direction in Direction:
        assert breaking_changes(old, new, direction) == []
    del new["$defs"]["Thing"]["properties"]["description"]
    assert breaking_changes(old, new, SENT) == ["Thing.description: field removed or renamed"]


def test_variants_of_a_union_pair_by_tag_not_by_name() -> None:
    old = union("made", "rolled_back")
    new = union("made", "rolled_back", name_prefix="Decision")
    new["$defs"]["DecisionMade"]["properties"]["at"] = {"type": "integer"}
    assert breaking_changes(old, new, RECEIVED) == [
        "DecisionMade.at: type changed (string to integer)"
    ]


def test_a_recursive_type_is_walked_once() -> None:
    node = {
        "type": "object",
        "properties": {"name": STRING, "children": {"type": "array", "items": REF_INNER}},
        "required": ["name"],
    }
    old = doc(field(REF_INNER), extra_defs={"Inner": node})
    new = copy.deepcopy(old)
    new["$defs"]["Inner"]["properties"]["name"] = {"type": "integer"}
    assert breaking_changes(old, new, SENT) == ["Thing.a.name: type changed (string to integer)"]


def test_the_same_change_judged_by_direction() -> None:
    narrower = doc(field({"enum": ["x"]}))
    wider = doc(field({"enum": ["x", "y"]}))
    assert breaking_changes(wider, narrower, SENT) == [
        "Thing.a: no longer accepts 'y' (enum narrowed)"
    ]
    assert breaking_changes(wider, narrower, RECEIVED) == []
    assert breaking_changes(narrower, wider, SENT) == []
    assert breaking_changes(narrower, wider, RECEIVED) == [
        "Thing.a: may now be 'y', a value clients do not know (enum widened)"
    ]


class EntityV1(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An entity before ids were checked."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class EntityV2(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An entity whose ids the registry may constrain."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    pattern: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None
    max_length: Annotated[int, msgspec.Meta(ge=1, le=128)] = 128


class ReplyV1(msgspec.Struct, frozen=True, kw_only=True):
    """A reply as released."""

    status: Literal["ok", "degraded"]
    detail: str


class ReplyV2(msgspec.Struct, frozen=True, kw_only=True):
    """A reply with an optional hint and a third status."""

    status: Literal["ok", "degraded", "partial"]
    detail: str
    hint: str | None = None


def _schema(tp: Any) -> JSONObject:
    return msgspec.json.schema(tp)


def test_optional_fields_on_msgspec_structs_pass_and_a_new_status_does_not() -> None:
    assert breaking_changes(_schema(EntityV1), _schema(EntityV2), SENT) == []
    assert breaking_changes(_schema(ReplyV1), _schema(ReplyV2), RECEIVED) == [
        "ReplyV2.status: may now be 'partial', a value clients do not know (enum widened)"
    ]
