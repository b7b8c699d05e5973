"""The burn-rate judgement, pure: rates per window, firing on both, no serves no data."""

from __future__ import annotations

import math

import pytest

from contracts.registry import BurnRateAlert
from gateway.freshness.alerts import alert_windows, burn_rate, judge
from writeback import ServeCounts

FAST = BurnRateAlert(name="fast", long_window_s=3600, short_window_s=300, burn_rate=14.4)
TARGET = 0.99


def serves(served: int, within: int) -> ServeCounts:
    return ServeCounts(served=served, within_sla=within)


@pytest.mark.parametrize(
    ("counts", "target", "rate"),
    [
        (serves(100, 100), 0.99, 0.0),
        (serves(100, 99), 0.99, 1.0),  # spends the budget exactly over the period
        (serves(100, 0), 0.99, 100.0),
        (serves(10, 5), 0.9, 5.0),
        (serves(1000, 856), 0.99, 14.4),
    ],
)
def test_burn_rate_is_the_bad_share_over_the_budget(
    counts: ServeCounts, target: float, rate: float
) -> None:
    found = burn_rate(counts, target)
    assert found is not None
    assert math.isclose(found, rate, abs_tol=1e-9)


def test_a_window_without_serves_has_no_rate() -> None:
    assert burn_rate(None, TARGET) is None
    assert burn_rate(serves(0, 0), TARGET) is None


def test_it_fires_only_when_both_windows_reach_the_threshold() -> None:
    hot, cool = serves(100, 50), serves(100, 99)
    assert judge(FAST, TARGET, hot, hot, firing=False).firing
    assert not judge(FAST, TARGET, hot, cool, firing=False).firing
    assert not judge(FAST, TARGET, cool, hot, firing=False).firing


def test_reaching_the_threshold_exactly_fires() -> None:
    at = serves(1000, 856)  # 14.4
    verdict = judge(FAST, TARGET, at, at, firing=False)
    assert verdict.firing and verdict.changed


def test_it_clears_when_either_window_falls_below() -> None:
    hot, cool = serves(100, 50), serves(100, 99)
    cleared = judge(FAST, TARGET, hot, cool, firing=True)
    assert (cleared.firing, cleared.changed) == (False, True)
    assert cleared.long_rate == pytest.approx(50.0)
    assert cleared.short_rate == pytest.approx(1.0)
    kept = judge(FAST, TARGET, hot, hot, firing=True)
    assert (kept.firing, kept.changed) == (True, False)


@pytest.mark.parametrize("firing", [False, True])
def test_no_serves_in_a_window_keeps_the_state(firing: bool) -> None:
    hot, good = serves(100, 0), serves(100, 100)
    for long, short in [(None, None), (hot, None), (None, hot), (good, None), (None, good)]:
        verdict = judge(FAST, TARGET, long, short, firing=firing)
        assert (verdict.firing, verdict.changed) == (firing, False), (long, short)


def test_the_event_windows_carry_counts_and_rates() -> None:
    long, short = serves(200, 100), None
    verdict = judge(FAST, TARGET, long, short, firing=False)
    windows = alert_windows(FAST, long, short, verdict)
    assert [(w.window, w.seconds, w.served, w.within_sla) for w in windows] == [
        ("long", 3600, 200, 100),
        ("short", 300, 0, 0),
    ]
    assert windows[0].burn_rate == pytest.approx(50.0)
    assert windows[1].burn_rate is None
