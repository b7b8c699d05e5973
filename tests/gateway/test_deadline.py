"""The request deadline: what is left, reserving time for later stages, waiting for a slot.

Budgets are either far beyond the test (1000 s) or already spent, so each outcome follows
from which limit is the earlier, not from how fast the machine runs. Which limit ends a
call is tested with the breaker (tests/gateway/test_breaker.py).
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.deadline import Deadline, DeadlineReached

LONG = 1000.0


def test_remaining_counts_down_from_the_budget_and_is_never_negative() -> None:
    assert LONG - 60 < Deadline(LONG).remaining() <= LONG
    assert Deadline(0).remaining() == 0.0
    assert Deadline(-5).remaining() == 0.0


def test_a_reserving_deadline_ends_earlier_by_the_reserve() -> None:
    deadline = Deadline(LONG)
    earlier = deadline.reserving(400.0)
    assert earlier.expires_at == deadline.expires_at - 400.0
    assert earlier.budget_s == LONG - 400.0
    assert deadline.remaining() - earlier.remaining() == pytest.approx(400.0, abs=1.0)
    spent = deadline.reserving(LONG * 2)
    assert (spent.budget_s, spent.remaining()) == (0.0, 0.0)


async def test_a_spent_reserve_keeps_the_call_from_starting() -> None:
    ran = False
    with pytest.raises(DeadlineReached, match="has passed"):
        async with Deadline(LONG).reserving(LONG).limit(LONG):
            ran = True
    assert not ran


async def test_a_call_that_finishes_in_time_is_untouched() -> None:
    async with Deadline(LONG).limit(LONG):
        await asyncio.sleep(0)
    with pytest.raises(KeyError, match="mine"):
        async with Deadline(LONG).limit(LONG):
            raise KeyError("mine")


async def test_a_free_slot_is_held_for_the_body_and_released_after() -> None:
    slots = asyncio.Semaphore(1)
    async with Deadline(LONG).holding(slots):
        assert slots.locked()
    assert not slots.locked()
    with pytest.raises(RuntimeError):
        async with Deadline(LONG).holding(slots):
            raise RuntimeError
    assert not slots.locked()


async def test_waiting_for_a_slot_ends_with_the_deadline_and_takes_none() -> None:
    slots = asyncio.Semaphore(1)
    await slots.acquire()
    with pytest.raises(DeadlineReached):
        async with Deadline(0.01).holding(slots):
            pytest.fail("the body ran without a slot")
    slots.release()
    # The failed wait neither took the slot nor released one it never held.
    assert not slots.locked()
    await slots.acquire()
    assert slots.locked()


async def test_a_waiter_gets_the_slot_when_it_is_released() -> None:
    slots = asyncio.Semaphore(1)
    await slots.acquire()
    entered = asyncio.Event()

    async def wait_for_slot() -> None:
        async with Deadline(LONG).holding(slots):
            entered.set()

    waiter = asyncio.create_task(wait_for_slot())
    await asyncio.sleep(0)
    assert not entered.is_set()
    slots.release()
    await asyncio.wait_for(waiter, LONG)
    assert entered.is_set()
    assert not slots.locked()
