"""Reconciliation's pure parts: agreement per dtype, what a check found, the call budget."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from contracts.registry import Feature
from gateway.features.online_store import StoredValue
from gateway.freshness.reconciliation import CallBudget, classify, values_agree


def stored(value: object, event_time_ms: int = 1_000) -> StoredValue:
    return StoredValue(
        value=value,  # type: ignore[arg-type]
        event_time_ms=event_time_ms,
        ingested_at_ms=event_time_ms,
        lineage_id="lin_x",
        kind="push",
        source_system="test",
        source_ref="r",
        schema_version=1,
        transform=None,
    )


def feature(dtype: str, tolerance: float = 0.0) -> Feature:
    return Feature(
        name="f",
        entity="customer",
        dtype=dtype,  # type: ignore[arg-type]
        max_staleness_ms=1000,
        source="s",
        path="/c/{customer_id}",
        tolerance=tolerance,
    )


@pytest.mark.parametrize(
    ("dtype", "tolerance", "a", "b", "agree"),
    [
        ("float64", 0.0, 0.25, 0.25, True),
        ("float64", 0.0, 0.25, 0.2500001, False),
        ("float64", 0.01, 0.25, 0.259, True),
        ("float64", 0.01, 0.25, 0.261, False),
        ("float64", 0.5, 1, 1.4, True),
        ("int64", 0.0, 3, 3, True),
        ("int64", 0.0, 3, 4, False),
        ("int64", 1.0, 3, 4, True),
        ("int64", 1.0, 3, 5, False),
        ("bool", 0.0, True, True, True),
        ("bool", 0.0, True, False, False),
        ("bool", 5.0, True, False, False),
        ("string", 0.0, "gold", "gold", True),
        ("string", 9.0, "gold", "Gold", False),
        ("int64", 0.0, None, None, True),
        ("int64", 0.0, None, 0, False),
    ],
)
def test_values_agree_by_dtype_and_tolerance(
    dtype: str, tolerance: float, a: object, b: object, agree: bool
) -> None:
    assert values_agree(dtype, tolerance, a, b) is agree  # type: ignore[arg-type]


def test_classify_names_each_case() -> None:
    f = feature("int64")
    assert classify(f, stored(3, 1_000), 3, 1_000) == "match"
    assert classify(f, stored(3, 1_000), 3, 999) == "match"
    assert classify(f, stored(3, 1_000), 3, 2_000) == "newer_at_source"
    assert classify(f, stored(3, 1_000), 4, 2_000) == "mismatch"
    assert classify(f, stored(3, 5_000), 4, 2_000) == "mismatch"
    assert classify(f, None, 4, 2_000) == "missing_in_store"
    assert classify(f, stored(3), None, None) == "missing_at_source"
    assert classify(f, None, None, None) == "match"


class FakeTime:
    """A clock that moves only when a sleeper sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_budget_paces_calls_and_never_allows_more_than_its_rate_in_a_second() -> None:
    time = FakeTime()
    budget = CallBudget(10.0, clock=time.clock, sleep=time.sleep)
    starts = []
    for _ in range(25):
        async with budget.call():
            starts.append(time.now)
            time.now += 0.03  # the call takes 30 ms
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1 - 1e-9
    # The call ten before has ended a second before the next one starts.
    for i in range(10, len(starts)):
        assert starts[i] >= starts[i - 10] + 0.03 + 1.0 - 1e-9
    assert all(s > 0 for s in time.sleeps)


async def test_budget_below_one_call_a_second_spaces_calls_by_its_interval() -> None:
    time = FakeTime()
    budget = CallBudget(0.5, clock=time.clock, sleep=time.sleep)
    starts = []
    for _ in range(3):
        async with budget.call():
            starts.append(time.now)
    assert [round(b - a, 6) for a, b in itertools.pairwise(starts)] == [2.0, 2.0]


async def test_budget_is_shared_by_concurrent_callers() -> None:
    time = FakeTime()
    budget = CallBudget(5.0, clock=time.clock, sleep=time.sleep)
    starts: list[float] = []

    async def caller() -> None:
        for _ in range(4):
            async with budget.call():
                starts.append(time.now)
                await asyncio.sleep(0)

    await asyncio.gather(caller(), caller(), caller())
    assert len(starts) == 12
    ordered = sorted(starts)
    assert min(b - a for a, b in itertools.pairwise(ordered)) >= 0.2 - 1e-9
    for i in range(5, len(ordered)):
        assert ordered[i] - ordered[i - 5] >= 1.0 - 1e-9


async def test_a_call_that_fails_still_ends_its_turn() -> None:
    time = FakeTime()
    budget = CallBudget(1.0, clock=time.clock, sleep=time.sleep)
    with pytest.raises(RuntimeError):
        async with budget.call():
            raise RuntimeError("source down")
    async with asyncio.timeout(1):
        async with budget.call():
            pass
    assert time.sleeps == [1.0]
