"""loadtests/freshness_report.py at a small size: its records are what the gateway
writes, the rollup takes them all, and the report's counts agree with the records'."""

from __future__ import annotations

import argparse
import random
import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from freshness_report import FEATURES, main, registry_text, variant

from contracts.decisions import DecisionRecord
from gateway.registry import parse_registry

pytestmark = pytest.mark.services


def test_records_decode_as_decision_records_with_a_dozen_stored_features() -> None:
    record = msgspec.json.decode(variant(random.Random(1), datetime.now(UTC)), type=DecisionRecord)
    stored = [name for name, f in record.features.items() if f.status != "request"]
    assert stored == FEATURES
    assert set(parse_registry(registry_text().encode()).features) == set(FEATURES)


async def test_a_small_run_rolls_up_every_decision_and_agrees_with_the_records() -> None:
    args = argparse.Namespace(
        decisions=3000,
        chunk=1000,
        rounds=2,
        direct_rounds=1,
        resolution=10,
        database=f"sg_test_{uuid.uuid4().hex[:12]}",
        keep=False,
    )
    results = await main(args)
    assert results["rolled_up"] == 3000
    assert results["timings"]["report"]["median_ms"] > 0
    # The rollup's windows are exact to one 10 s slot at their start.
    assert results["largest_count_difference"] <= results["decisions_per_slot"] + 1
