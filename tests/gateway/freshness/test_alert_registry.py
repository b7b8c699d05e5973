"""The registry's burn-rate alerts: windows in order and names unique, each defect named
by its field path."""

from __future__ import annotations

import pytest

from gateway.registry import RegistryError, parse_registry

BASE = """
[[entities]]
name = "customer"
key = "customer_id"

[[features]]
name = "txn_count"
entity = "customer"
dtype = "int64"
max_staleness_ms = 5000
"""

ALERTS = """
[freshness]
objective = {{ target = 0.9, period_days = 1 }}

[[freshness.alerts]]
name = "fast"
long_window_s = {long}
short_window_s = {short}
burn_rate = 2.0

[[freshness.alerts]]
name = "{second}"
long_window_s = 600
short_window_s = 60
burn_rate = 1.0
"""


def registry(long: int = 20, short: int = 5, second: str = "slow") -> bytes:
    return (BASE + ALERTS.format(long=long, short=short, second=second)).encode()


def test_declared_alerts_and_objective_are_kept() -> None:
    spec = parse_registry(registry()).file.freshness
    assert [(a.name, a.long_window_s, a.short_window_s) for a in spec.alerts] == [
        ("fast", 20, 5),
        ("slow", 600, 60),
    ]
    assert spec.objective.target == 0.9


def test_without_a_freshness_section_the_workbook_alerts_apply() -> None:
    spec = parse_registry(BASE.encode()).file.freshness
    assert [(a.name, a.long_window_s, a.short_window_s, a.burn_rate) for a in spec.alerts] == [
        ("fast", 3600, 300, 14.4),
        ("slow", 21_600, 1800, 6.0),
    ]


@pytest.mark.parametrize(("long", "short"), [(20, 20), (20, 30)])
def test_a_short_window_not_shorter_than_the_long_one_is_refused(long: int, short: int) -> None:
    with pytest.raises(RegistryError, match="shorter than long_window_s") as caught:
        parse_registry(registry(long=long, short=short), origin="reg.toml")
    assert caught.value.path == "$.freshness.alerts[0].short_window_s"
    assert str(caught.value).startswith("reg.toml: ")


def test_two_alerts_of_one_name_are_refused() -> None:
    with pytest.raises(RegistryError, match="duplicate name 'fast'") as caught:
        parse_registry(registry(second="fast"))
    assert caught.value.path == "$.freshness.alerts[1].name"


def test_a_window_out_of_range_is_refused_by_the_contract() -> None:
    with pytest.raises(RegistryError) as caught:
        parse_registry(registry(short=0))
    assert caught.value.path == "$.freshness.alerts[0].short_window_s"
