"""Registry checks and plans on small registries written out here, one defect at a time.

Each bad registry differs from a good one by one edit, and its error must name the
path of the field that edit broke.
"""

from __future__ import annotations

import pytest

from contracts.registry import Entity
from contracts.scoring import ModelRef
from gateway.registry import COERCERS, EntityIds, RegistryError, coerce, parse_registry

GOOD = """
[[entities]]
name = "customer"
key = "customer_id"

[[entities]]
name = "merchant"
key = "merchant_id"

[[sources]]
name = "profile"
url = "http://profile.invalid"
owner = "t"

[[features]]
name = "kyc_level"
entity = "customer"
dtype = "int64"
max_staleness_ms = 1000
source = "profile"
path = "/customers/{customer_id}"
on_unavailable = "default"
default = 0

[[features]]
name = "email"
entity = "customer"
dtype = "string"
max_staleness_ms = 1000
source = "profile"
path = "/customers/{customer_id}"
classification = "pii"

[[features]]
name = "merchant_risk"
entity = "merchant"
dtype = "float64"
max_staleness_ms = 1000
classification = "pii"
include_in_events = true

[[features]]
name = "segment"
entity = "customer"
dtype = "string"
max_staleness_ms = 1000
include_in_events = false

[[models]]
name = "m"
version = "1"
subject = "customer"
endpoint = "http://model.invalid"
features = ["merchant_risk", "kyc_level", "email", "segment"]
input = { layout = "columns" }
context = [
  { name = "amount", dtype = "float64" },
  { name = "phone", dtype = "string", classification = "pii" },
]
"""


def test_a_plan_lists_subject_first_and_splits_pii_from_what_is_published() -> None:
    plan = parse_registry(GOOD.encode()).plans["m"]
    assert plan.subject.name == "customer"
    # Every entity once, the subject first whatever order the features name them in.
    assert [e.name for e in plan.entities] == ["customer", "merchant"]
    assert [f.name for f in plan.features] == ["merchant_risk", "kyc_level", "email", "segment"]
    assert plan.vector == ("merchant_risk", "kyc_level", "email", "segment", "amount", "phone")
    assert plan.pii == frozenset({"email", "merchant_risk", "phone"})
    # pii stays out of events unless it opts in; include_in_events = false opts out.
    assert plan.published == ("merchant_risk", "kyc_level", "amount")


def test_a_plan_holds_what_each_request_would_otherwise_work_out() -> None:
    registry = parse_registry(GOOD.encode())
    plan = registry.plans["m"]
    # Entity keys as requests send them, subject first, with each entity's id rule.
    assert [(k, e.key, e.entity) for k, e in plan.entity_keys.items()] == [
        ("customer_id", "customer_id", "customer"),
        ("merchant_id", "merchant_id", "merchant"),
    ]
    assert plan.entity_keys["merchant_id"].ids is registry.ids["merchant"]
    # Context in declared order, each with its dtype's coercer.
    assert list(plan.context.items()) == [
        ("amount", COERCERS["float64"]),
        ("phone", COERCERS["string"]),
    ]
    # One online-store read per entity, its features in vector order.
    assert plan.reads == (
        ("merchant", ("merchant_risk",)),
        ("customer", ("kyc_level", "email", "segment")),
    )
    assert plan.model_ref == ModelRef(name="m", version="1")


def test_the_digest_names_the_exact_bytes() -> None:
    first = parse_registry(GOOD.encode())
    assert first.digest == parse_registry(GOOD.encode()).digest
    assert len(first.digest) == 16
    assert first.digest != parse_registry((GOOD + "\n").encode()).digest


def test_indexes_are_by_name_and_by_key() -> None:
    registry = parse_registry(GOOD.encode())
    assert registry.entity_by_key["merchant_id"].name == "merchant"
    assert set(registry.features) == {"kyc_level", "email", "merchant_risk", "segment"}
    assert set(registry.ids) == {"customer", "merchant"}


@pytest.mark.parametrize(
    ("old", "new", "path", "message"),
    [
        ('key = "merchant_id"', 'key = "customer_id"', "$.entities[1].key", "key used twice"),
        ('name = "merchant"', 'name = "customer"', "$.entities[1].name", "duplicate name"),
        (
            'path = "/customers/{customer_id}"\non_unavailable',
            "on_unavailable",
            "$.features[0].path",
            "needs the path",
        ),
        (
            'path = "/customers/{customer_id}"\nclassification',
            'path = "/people/{customer_id}"\nclassification',
            "$.features[1].path",
            "must share one path (/customers/{customer_id})",
        ),
        (
            'path = "/customers/{customer_id}"\non_unavailable',
            'path = "/customers/{customer_id}/{merchant_id}"\non_unavailable',
            "$.features[0].path",
            "exactly {customer_id}",
        ),
        ("default = 0\n", "", "$.features[0].default", "needs a default"),
        ("default = 0\n", "default = 0.5\n", "$.features[0].default", "expected int64"),
        ('entity = "merchant"', 'entity = "shop"', "$.features[2].entity", "unknown entity"),
        (
            '"segment"]',
            '"segment", "email"]',
            "$.models[0].features[4]",
            "listed twice",
        ),
        ('"segment"]', '"segmnt"]', "$.models[0].features[3]", "unknown feature"),
        (
            '{ name = "amount"',
            '{ name = "email"',
            "$.models[0].context[0].name",
            "'email' is taken",
        ),
        (
            '{ name = "phone"',
            '{ name = "amount"',
            "$.models[0].context[1].name",
            "'amount' is taken",
        ),
        (
            'input = { layout = "columns" }',
            'input = { layout = "tensor" }',
            "$.models[0].input.layout",
            "cannot carry string",
        ),
        ('subject = "customer"', 'subject = "shop"', "$.models[0].subject", "unknown entity"),
        ("max_staleness_ms = 1000", "max_staleness_ms = -1", "$.features[0].max_staleness_ms", ""),
        ('owner = "t"', 'owner = "t"\nretries = 3', "$.sources[0]", "unknown field"),
        ('dtype = "float64" }', 'dtype = "decimal" }', "$.models[0].context[0].dtype", ""),
    ],
)
def test_one_defect_names_its_path(old: str, new: str, path: str, message: str) -> None:
    assert old in GOOD
    with pytest.raises(RegistryError) as caught:
        parse_registry(GOOD.replace(old, new, 1).encode(), origin="reg.toml")
    assert caught.value.path == path
    assert message in str(caught.value)
    assert str(caught.value).startswith("reg.toml: ")
    assert str(caught.value).endswith(f" - at `{path}`")


def test_text_that_is_not_toml_is_a_registry_error_at_the_root() -> None:
    with pytest.raises(RegistryError, match="not valid TOML") as caught:
        parse_registry(b"[[entities]\nname =")
    assert caught.value.path == "$"


def test_a_registry_needs_an_entity() -> None:
    with pytest.raises(RegistryError) as caught:
        parse_registry(b"entities = []")
    assert caught.value.path == "$.entities"


def ids(max_length: int = 5, pattern: str | None = None) -> EntityIds:
    return EntityIds.of(Entity(name="c", key="c_id", max_length=max_length, pattern=pattern))


def test_an_id_may_be_as_long_as_max_length_and_no_longer() -> None:
    assert ids().problem("abcde") is None
    assert ids().problem("abcdef") == "c_id is longer than 5 characters"
    # Length is checked first: a long id is named for its length even if it matches.
    assert ids(pattern="[a-z]+").problem("abcdef") == "c_id is longer than 5 characters"


@pytest.mark.parametrize("bad", ["a\x00", "a\tb", "\x7f", "a\x9f", "\n"])
def test_without_a_pattern_control_characters_are_refused(bad: str) -> None:
    assert ids().problem(bad) == "c_id must not contain control characters"


@pytest.mark.parametrize("good", ["", "a b", "ü/é", "../x", "\xa0"])
def test_without_a_pattern_printable_ids_are_admitted(good: str) -> None:
    assert ids().problem(good) is None


@pytest.mark.parametrize(
    ("value", "dtype", "expected", "kind"),
    [(3, "float64", 3.0, float), (2.5, "float64", 2.5, float), (0, "int64", 0, int)],
)
def test_coerce_returns_the_declared_python_type(
    value: object, dtype: str, expected: object, kind: type
) -> None:
    coerced = coerce(value, dtype)  # type: ignore[arg-type]
    assert coerced == expected
    assert type(coerced) is kind


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (False, "float64", "expected float64, got bool"),
        (None, "string", "expected string, got NoneType"),
        (1.0, "int64", "expected int64, got float"),
        ("true", "bool", "expected bool, got str"),
    ],
)
def test_coerce_names_the_dtype_and_what_it_got(value: object, dtype: str, message: str) -> None:
    with pytest.raises(TypeError) as caught:
        coerce(value, dtype)  # type: ignore[arg-type]
    assert str(caught.value) == message
