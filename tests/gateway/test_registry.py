"""Registry loading: a good file indexes, a bad one names the path of the bad field."""

from __future__ import annotations

from pathlib import Path
from string import Template

import pytest

from gateway.registry import RegistryError, coerce, load_registry, parse_registry

SAMPLE = Path(__file__).parents[2] / "sample" / "scoregate_dev" / "sample_registry.toml"


def sample_text() -> str:
    return Template(SAMPLE.read_text()).substitute(
        sources_url="http://127.0.0.1:1", model_url="http://127.0.0.1:2"
    )


def test_sample_registry_loads_with_plans() -> None:
    registry = parse_registry(sample_text().encode())
    plan = registry.plans["fraud"]
    assert plan.subject.key == "customer_id"
    assert [e.name for e in plan.entities] == ["customer", "merchant"]
    assert plan.vector[-2:] == ("amount", "card_present")
    assert registry.sources["txn_stats"].retry.attempts == 2


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ('dtype = "int64"', 'dtype = "int32"', "$.features[0].dtype"),
        ('source = "txn_stats"', 'source = "nope"', "$.features[0].source"),
        ('entity = "merchant"', 'entity = "shop"', "$.features[6].entity"),
        ('"kyc_level",\n', '"kyc_levle",\n', "$.models[0].features[4]"),
        ("timeout_ms = 300", "timeout_ms = -1", "$.models[0].timeout_ms"),
        ("default = 0.5", 'default = "high"', "$.features[5].default"),
        ('subject = "customer"', 'subject = "person"', "$.models[0].subject"),
        (
            'path = "/merchants/{merchant_id}/risk"',
            'path = "/merchants/{customer_id}/risk"',
            "$.features[6].path",
        ),
        ('owner = "fraud-ml"', 'owner = "fraud-ml"\ncolour = "red"', "$.models[0]"),
    ],
)
def test_bad_field_names_its_path(old: str, new: str, path: str) -> None:
    text = sample_text()
    assert old in text
    with pytest.raises(RegistryError) as caught:
        parse_registry(text.replace(old, new, 1).encode(), origin="registry.toml")
    assert caught.value.path.startswith(path)
    assert "registry.toml" in str(caught.value)


def test_duplicate_feature_name(tmp_path: Path) -> None:
    text = sample_text().replace('name = "txn_amount_sum_24h"', 'name = "txn_count_30m"')
    bad = tmp_path / "r.toml"
    bad.write_text(text)
    with pytest.raises(RegistryError) as caught:
        load_registry(bad)
    assert caught.value.path == "$.features[1].name"
    assert str(bad) in str(caught.value)


def test_missing_file_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("value", "dtype", "expected"),
    [(3, "int64", 3), (3, "float64", 3.0), (True, "bool", True), ("x", "string", "x")],
)
def test_coerce_accepts(value: object, dtype: str, expected: object) -> None:
    assert coerce(value, dtype) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "dtype"),
    [(True, "int64"), (1.5, "int64"), ("1", "float64"), (1, "bool"), (1, "string")],
)
def test_coerce_rejects(value: object, dtype: str) -> None:
    with pytest.raises(TypeError):
        coerce(value, dtype)  # type: ignore[arg-type]
