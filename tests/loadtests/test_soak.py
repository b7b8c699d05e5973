"""The soak's memory figures and its integrity verdict."""

import os

import pytest
from soak import rss_kb, rss_summary, soak_integrity, tree_rss_kb


def _samples(*points: tuple[float, str, int]) -> list[dict[str, object]]:
    return [{"t_s": t, "phase": phase, "rss_kb": kb} for t, phase, kb in points]


def test_growth_is_from_the_end_of_the_warm_up_to_the_end() -> None:
    samples = _samples((0, "warm-up", 50_000), (60, "soak", 100_000), (120, "soak", 104_000))

    summary = rss_summary(100_000, 104_000, samples)

    assert summary["growth_pct"] == 4.0
    assert summary["max_kb"] == 104_000
    assert summary["within_target"] is True
    assert summary["slope_kb_per_minute"] == pytest.approx(4000)


def test_growth_past_five_percent_misses_the_target() -> None:
    samples = _samples((60, "soak", 100_000), (90, "soak", 130_000), (120, "soak", 106_000))

    summary = rss_summary(100_000, 106_000, samples)

    assert summary["within_target"] is False
    assert summary["max_kb"] == 130_000


def test_rss_of_this_process_and_its_tree() -> None:
    own = rss_kb(os.getpid())

    assert own is not None and own > 0
    assert tree_rss_kb(os.getpid()) >= own


def _integrity(answers: int, audit: int, events: int) -> dict[str, object]:
    return {"answers_200": answers, "audit_rows": audit, "made_events_of_run": events, "ok": True}


def test_soak_integrity_wants_answers_audit_rows_and_events_equal() -> None:
    assert soak_integrity(_integrity(10, 10, 10))["ok"] is True
    # A request committed but not answered passes the benchmark's check, not the soak's.
    assert soak_integrity(_integrity(10, 11, 11))["ok"] is False
    assert soak_integrity(_integrity(10, 10, 9))["ok"] is False
