"""The compatibility rule: would a new schema of a public type break its callers?

A public type goes one way. It is *sent* by callers (a request, or the registry
file that operators write) or *received* by them (a response, a record, an event).
A new schema is judged against the released one, following ``$ref``s and unions
down to every field, and each difference that breaks someone is reported as
``<Type>.<field path>: <what changed>`` (``.name`` for a field, ``{}`` for the
values of a dict, ``[]`` for the items of an array). The variants of a tagged
union pair by their tag value, other branches of a union by kind and name.

In both directions:

- a field of the released schema that is gone breaks (``field removed or
  renamed``): callers name fields, and a rename is a removal and an addition;
- descriptions, titles, examples and the names of ``$defs`` entries never count;
  JSON carries no type names, only the shape they describe is compared;
- a validation keyword this rule does not know breaks whenever its value changes.

Sent: everything the released schema accepted must still be accepted. Breaking:

- a new required field, or an existing field that became required;
- a type alternative dropped or changed (``string | null`` to ``string``,
  ``string`` to ``integer``, ``number`` to ``integer``, a free string to an enum);
- a narrowed enum (a value dropped);
- a tighter bound: a higher ``minimum``/``minLength``/``minItems``/
  ``minProperties``, a lower ``maximum``/``maxLength``/``maxItems``/
  ``maxProperties``, an exclusive bound where an inclusive one was, a new or
  changed ``pattern``, ``format`` or ``multipleOf``, a new ``uniqueItems``;
- an object that starts refusing keys it took (``additionalProperties`` closed);
- a changed default: a caller that leaves the field out gets another value.

New optional fields, widened enums, looser bounds and required fields made
optional are not breaking.

Received: everything sent now must fit what the released schema described, and
clients read fields by name. Breaking:

- a field that was required (always present) that may now be missing;
- a new type alternative or a changed type (``string`` to ``string | null``,
  ``integer`` to ``number``, an enum to a free string);
- a widened enum, a new variant of a tagged union included: a client's switch
  meets a value it does not know;
- a looser bound (the mirror of the list above: a lower ``minimum``, a higher
  ``maxLength``, a ``pattern`` dropped or changed).

New fields, required or optional, are not breaking, even where the released
object was closed: clients must ignore fields they do not know, and
``forbid_unknown_fields`` guards what the gateway accepts, not what clients read.
Narrowed enums, tighter bounds and fields made required are not breaking either.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Any

JSONObject = dict[str, Any]

# Keys that document a schema without changing what validates against it.
_ANNOTATIONS = frozenset(
    {"title", "description", "examples", "default", "$comment", "deprecated", "$schema"}
)

# Keys the rule interprets itself; any other validation keyword must stay equal.
_INTERPRETED = frozenset(
    {
        "$ref",
        "$defs",
        "anyOf",
        "oneOf",
        "discriminator",
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "pattern",
        "format",
        "uniqueItems",
    }
)

_LOWER_COUNTS = ("minLength", "minItems", "minProperties")
_UPPER_COUNTS = ("maxLength", "maxItems", "maxProperties")
_EXACT = ("pattern", "format")

# Which schema kind accepts the values of which: a number takes every integer.
_COVERS = {"number": {"number", "integer"}}

_Bound = tuple[float, bool]


class Direction(enum.Enum):
    """Which way a public type travels, seen from its callers."""

    SENT = "sent by callers"
    RECEIVED = "received by callers"


def breaking_changes(old: JSONObject, new: JSONObject, direction: Direction) -> list[str]:
    """What in ``new`` breaks callers built against ``old``, one line per break.

    Args:
        old: The released JSON Schema document (with its ``$defs``).
        new: The JSON Schema document of the same type now.
        direction: Whether callers send or receive the type.

    Returns:
        ``<Type>.<field path>: <what changed>`` for each break, in schema order;
        empty when ``new`` is compatible.
    """
    comparison = _Comparison(old, new, direction)
    comparison.value(old, new, "")
    return list(dict.fromkeys(comparison.problems))


@dataclass(frozen=True)
class _Alternative:
    """One branch of a (possibly union) schema, with its ``$ref`` name if it had one."""

    kind: str  # a JSON type, "enum" or "any"
    node: JSONObject
    name: str | None
    # (field, value) of each field fixed to one value: the tags of a tagged union.
    tags: frozenset[tuple[str, str]] = frozenset()


def _resolve(doc: JSONObject, node: JSONObject) -> tuple[JSONObject, str | None]:
    name = None
    while "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        node = doc["$defs"][name]
    return node, name


def _alternatives(doc: JSONObject, node: JSONObject) -> list[_Alternative]:
    node, name = _resolve(doc, node)
    branches = node.get("anyOf", node.get("oneOf"))
    if branches is not None:
        return [alt for branch in branches for alt in _alternatives(doc, branch)]
    if "enum" in node or "const" in node:
        return [_Alternative("enum", node, name)]
    types = node.get("type")
    if types is None:
        return [_Alternative("any", node, name)]
    if isinstance(types, str):
        types = [types]
    tags = _tags(doc, node)
    return [_Alternative(str(kind), node, name, tags) for kind in types]


def _tags(doc: JSONObject, node: JSONObject) -> frozenset[tuple[str, str]]:
    tags = set()
    for field_name, prop in node.get("properties", {}).items():
        prop, _ = _resolve(doc, prop)
        values = prop.get("enum", [prop["const"]] if "const" in prop else [])
        if len(values) == 1:
            tags.add((str(field_name), repr(values[0])))
    return frozenset(tags)


def _enum_values(alt: _Alternative) -> list[Any]:
    return list(alt.node["enum"]) if "enum" in alt.node else [alt.node["const"]]


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _same_value(a: Any, b: Any) -> bool:
    # JSON tells true from 1, which Python's == does not.
    return _json_kind(a) == _json_kind(b) and a == b


def _covers(wide: str, narrow: str) -> bool:
    return wide == "any" or narrow in _COVERS.get(wide, {wide})


def _lower(node: JSONObject, integer: bool) -> _Bound | None:
    """The tightest lower bound as (value, exclusive); integers get inclusive ones."""
    present = [k for k in ("minimum", "exclusiveMinimum") if k in node]
    bounds = [(float(node[k]), k == "exclusiveMinimum") for k in present]
    if integer:
        bounds = [
            (math.floor(v) + 1.0 if excl else float(math.ceil(v)), False) for v, excl in bounds
        ]
    return max(bounds) if bounds else None


def _upper(node: JSONObject, integer: bool) -> _Bound | None:
    """The tightest upper bound as (value, exclusive); integers get inclusive ones."""
    present = [k for k in ("maximum", "exclusiveMaximum") if k in node]
    bounds = [(float(node[k]), k == "exclusiveMaximum") for k in present]
    if integer:
        bounds = [
            (math.ceil(v) - 1.0 if excl else float(math.floor(v)), False) for v, excl in bounds
        ]
    return min(bounds, key=lambda b: (b[0], not b[1])) if bounds else None


def _lower_within(narrow: _Bound | None, wide: _Bound | None) -> bool:
    if wide is None:
        return True
    return narrow is not None and narrow >= wide


def _upper_within(narrow: _Bound | None, wide: _Bound | None) -> bool:
    if wide is None:
        return True
    return narrow is not None and (narrow[0], not narrow[1]) <= (wide[0], not wide[1])


def _show_bound(bound: _Bound | None, below: bool) -> str:
    if bound is None:
        return "none"
    sign = (">" if below else "<") + ("" if bound[1] else "=")
    return f"{sign} {bound[0]:g}"


def _matches(pattern: str, value: str) -> bool:
    # JSON Schema patterns are ECMA-262: one Python cannot compile counts as a rejection,
    # which errs towards reporting a break.
    try:
        return re.search(pattern, value) is not None
    except re.error:
        return False


def _accepts(alt: _Alternative, value: Any) -> bool:
    """Whether one branch of a schema takes a value (enums, types, simple bounds)."""
    if alt.kind == "any":
        return True
    if alt.kind == "enum":
        return any(_same_value(value, v) for v in _enum_values(alt))
    if not _covers(alt.kind, _json_kind(value)):
        return False
    node = alt.node
    if isinstance(value, str):
        length: int = len(value)
        return node.get("minLength", 0) <= length <= node.get("maxLength", length) and (
            "pattern" not in node or _matches(str(node["pattern"]), value)
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        point = (float(value), False)
        integer = alt.kind == "integer"
        return _lower_within(point, _lower(node, integer)) and _upper_within(
            point, _upper(node, integer)
        )
    return True


def _additional(node: JSONObject) -> JSONObject | None:
    """What ``additionalProperties`` admits: None when closed, ``{}`` when anything."""
    extra = node.get("additionalProperties", True)
    if extra is False:
        return None
    return {} if extra is True else dict(extra)


def _describe(alternatives: list[_Alternative]) -> str:
    kinds = []
    for alt in alternatives:
        kind = f"one of {_enum_values(alt)!r}" if alt.kind == "enum" else alt.kind
        kinds.append(kind)
    return " | ".join(dict.fromkeys(kinds))


class _Comparison:
    """One walk over a released and a new schema document, collecting breaks."""

    def __init__(
        self,
        old_doc: JSONObject,
        new_doc: JSONObject,
        direction: Direction,
        seen: set[tuple[str, str]] | None = None,
    ) -> None:
        self.old_doc = old_doc
        self.new_doc = new_doc
        self.direction = direction
        self.sent = direction is Direction.SENT
        self.problems: list[str] = []
        # Named pairs already compared: shared types are judged once, recursion ends.
        self._seen: set[tuple[str, str]] = set() if seen is None else seen
        self._effect = (
            "narrows what callers may send" if self.sent else "widens what callers receive"
        )

    def value(self, old: JSONObject, new: JSONObject, path: str) -> None:
        """Compare two schemas of one value (a field, a dict value, an array item)."""
        old_alts = _alternatives(self.old_doc, old)
        new_alts = _alternatives(self.new_doc, new)
        # The new schema must take all the released one took (sent), or the released
        # one must take all the new one may produce (received).
        narrow, wide = (old_alts, new_alts) if self.sent else (new_alts, old_alts)
        if any(alt.kind == "any" for alt in wide):
            return
        union = sum(alt.kind == "object" for alt in narrow + wide) > 2
        for alt in narrow:
            at = path or alt.name or "<root>"
            if alt.kind == "enum":
                self._enum(alt, wide, at)
                continue
            candidates = [other for other in wide if _covers(other.kind, alt.kind)]
            if not candidates:
                self.problems.append(
                    f"{at}: type changed ({_describe(old_alts)} to {_describe(new_alts)})"
                )
                continue
            if alt.kind == "object" and union:
                candidates = self._same_variant(alt, candidates, at)
            if candidates:
                match = self._closest(alt, candidates, at)
                old_alt, new_alt = (alt, match) if self.sent else (match, alt)
                # Paths start from the type's name in the code as it is now.
                self._pair(old_alt, new_alt, path or new_alt.name or at)

    def _enum(self, narrow: _Alternative, wide: list[_Alternative], path: str) -> None:
        for value in _enum_values(narrow):
            if any(_accepts(alt, value) for alt in wide):
                continue
            if self.sent:
                self.problems.append(f"{path}: no longer accepts {value!r} (enum narrowed)")
            else:
                self.problems.append(
                    f"{path}: may now be {value!r}, a value clients do not know (enum widened)"
                )

    def _same_variant(
        self, narrow: _Alternative, candidates: list[_Alternative], path: str
    ) -> list[_Alternative]:
        """The variants of a union of objects with the tag of ``narrow``.

        A variant whose tag the other side lacks is a variant added (received) or
        dropped (sent); it is reported once instead of field by field.
        """
        tagged = [alt for alt in candidates if alt.tags & narrow.tags]
        if tagged:
            return tagged
        fields = {name for name, _ in narrow.tags} & {
            name for alt in candidates for name, _ in alt.tags
        }
        if not fields:
            return candidates
        tag = ", ".join(f"{name}={value}" for name, value in sorted(narrow.tags) if name in fields)
        if self.sent:
            self.problems.append(f"{path}: variant {tag} no longer accepted (union narrowed)")
        else:
            self.problems.append(
                f"{path}: new variant {tag}, which clients do not know (union widened)"
            )
        return []

    def _closest(
        self, narrow: _Alternative, candidates: list[_Alternative], path: str
    ) -> _Alternative:
        """The branch that stands for ``narrow``.

        That is the only candidate, else the one of the same name, else the one with
        the fewest breaks.
        """
        if len(candidates) == 1:
            return candidates[0]
        named = [alt for alt in candidates if alt.name is not None and alt.name == narrow.name]
        if named:
            return named[0]

        def cost(alt: _Alternative) -> int:
            trial = _Comparison(self.old_doc, self.new_doc, self.direction, set(self._seen))
            if self.sent:
                trial._pair(narrow, alt, path)
            else:
                trial._pair(alt, narrow, path)
            return len(trial.problems)

        return min(candidates, key=cost)

    def _pair(self, old: _Alternative, new: _Alternative, path: str) -> None:
        """Compare two branches of the same kind."""
        if old.name is not None and new.name is not None:
            if (old.name, new.name) in self._seen:
                return
            self._seen.add((old.name, new.name))
        narrow, wide = (old, new) if self.sent else (new, old)
        self._bounds(old.node, new.node, narrow, wide, path)
        self._unknown_keywords(old.node, new.node, path)
        if "array" in (old.kind, new.kind):
            self.value(old.node.get("items", {}), new.node.get("items", {}), f"{path}[]")
        if "object" in (old.kind, new.kind):
            self._object(old.node, new.node, path)

    def _bounds(
        self,
        old: JSONObject,
        new: JSONObject,
        narrow: _Alternative,
        wide: _Alternative,
        path: str,
    ) -> None:
        """Lengths, counts, patterns and numeric ranges: ``narrow`` must keep within ``wide``."""
        n, w = narrow.node, wide.node
        tighter = [key for key in _LOWER_COUNTS if key in w and n.get(key, 0) < w[key]]
        tighter += [key for key in _UPPER_COUNTS if key in w and n.get(key, math.inf) > w[key]]
        tighter += [key for key in _EXACT if key in w and n.get(key) != w[key]]
        if "multipleOf" in w and ("multipleOf" not in n or n["multipleOf"] % w["multipleOf"]):
            tighter.append("multipleOf")
        if w.get("uniqueItems") and not n.get("uniqueItems"):
            tighter.append("uniqueItems")
        for key in tighter:
            self._changed(path, key, old, new)
        integer = narrow.kind == "integer"
        for bound, within, below in ((_lower, _lower_within, True), (_upper, _upper_within, False)):
            if not within(bound(n, integer), bound(w, integer)):
                before = _show_bound(bound(old, integer), below)
                after = _show_bound(bound(new, integer), below)
                side = "lower" if below else "upper"
                self.problems.append(f"{path}: {side} bound {before} to {after} ({self._effect})")

    def _changed(self, path: str, key: str, old: JSONObject, new: JSONObject) -> None:
        before = repr(old[key]) if key in old else "none"
        after = repr(new[key]) if key in new else "none"
        self.problems.append(f"{path}: {key} {before} to {after} ({self._effect})")

    def _unknown_keywords(self, old: JSONObject, new: JSONObject, path: str) -> None:
        for key in sorted((old.keys() | new.keys()) - _INTERPRETED - _ANNOTATIONS):
            if old.get(key) != new.get(key):
                before = repr(old[key]) if key in old else "none"
                after = repr(new[key]) if key in new else "none"
                self.problems.append(f"{path}: {key} changed from {before} to {after}")

    def _object(self, old: JSONObject, new: JSONObject, path: str) -> None:
        old_props: JSONObject = old.get("properties", {})
        new_props: JSONObject = new.get("properties", {})
        old_required = set(old.get("required", []))
        new_required = set(new.get("required", []))
        for name, old_prop in old_props.items():
            at = f"{path}.{name}"
            if name not in new_props:
                self.problems.append(f"{at}: field removed or renamed")
                continue
            new_prop = new_props[name]
            self.value(old_prop, new_prop, at)
            if self.sent and name in new_required and name not in old_required:
                self.problems.append(f"{at}: became required")
            if not self.sent and name in old_required and name not in new_required:
                self.problems.append(f"{at}: may now be missing (was required)")
            if (
                self.sent
                and "default" in old_prop
                and "default" in new_prop
                and not _same_value(old_prop["default"], new_prop["default"])
            ):
                self.problems.append(
                    f"{at}: default {old_prop['default']!r} to {new_prop['default']!r}"
                    " (callers that leave it out get another value)"
                )
        if self.sent:
            for name in new_props.keys() - old_props.keys():
                if name in new_required:
                    self.problems.append(f"{path}.{name}: new required field")
        self._additional_properties(old, new, path)

    def _additional_properties(self, old: JSONObject, new: JSONObject, path: str) -> None:
        old_extra, new_extra = _additional(old), _additional(new)
        if old_extra is not None and new_extra is not None:
            self.value(old_extra, new_extra, f"{path}{{}}")
        elif self.sent and old_extra is not None:
            self.problems.append(f"{path}: no longer accepts other keys (additionalProperties)")
