"""DependencyBreaker: pybreaker's states made right for coroutines.

Time before a probe runs on a clock the test moves, so no test waits for a reset.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from contracts.registry import BreakerPolicy
from gateway.breaker import BreakerOpen, DependencyBreaker
from gateway.deadline import Deadline, DeadlineReached
from tests.support.clock import ManualClock


class NotFoundAnswer(Exception):
    pass


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def breaker(clock: ManualClock, fail_max: int = 3, reset_ms: int = 100) -> DependencyBreaker:
    return DependencyBreaker(
        "dep",
        BreakerPolicy(fail_max=fail_max, reset_timeout_ms=reset_ms),
        is_answer=lambda exc: isinstance(exc, NotFoundAnswer),
        clock=clock,
    )


async def fail(b: DependencyBreaker, exc: Exception) -> None:
    with pytest.raises(type(exc)):
        async with b.guard():
            await asyncio.sleep(0)
            raise exc


async def open_then_reset(b: DependencyBreaker, clock: ManualClock, reset_ms: int = 100) -> None:
    """Open ``b`` with one failure (fail_max 1), then let its reset timeout pass."""
    await fail(b, ConnectionError("down"))
    assert b.state == "open"
    clock.advance(reset_ms / 1000)


async def test_failures_open_the_breaker_and_then_calls_are_refused(clock: ManualClock) -> None:
    b = breaker(clock, fail_max=3)
    for _ in range(3):
        await fail(b, ConnectionError("down"))
    assert b.state == "open"
    clock.advance(0.04)
    called = False
    with pytest.raises(BreakerOpen) as refused:
        async with b.guard():
            called = True
    assert not called
    assert refused.value.retry_after_s == pytest.approx(0.06)


async def test_the_breaker_stays_open_until_its_reset_timeout_has_passed(
    clock: ManualClock,
) -> None:
    b = breaker(clock, fail_max=1, reset_ms=100)
    await fail(b, ConnectionError("down"))
    clock.advance(0.099)
    with pytest.raises(BreakerOpen):
        async with b.guard():
            pass
    clock.advance(0.001)
    async with b.guard():
        pass
    assert b.state == "closed"


async def test_the_dependencys_own_timeouts_count_as_failures(clock: ManualClock) -> None:
    b = breaker(clock, fail_max=2)
    for _ in range(2):
        with pytest.raises(TimeoutError) as timed_out:
            async with b.guard(), Deadline(10).limit(0.01):
                await asyncio.Event().wait()
        assert not isinstance(timed_out.value, DeadlineReached)
    assert b.state == "open"


async def test_a_timeout_the_request_deadline_caused_does_not_count(clock: ManualClock) -> None:
    b = breaker(clock, fail_max=1)
    for _ in range(5):
        # The dependency's own limit (10 s) is cut to the request's 10 ms.
        with pytest.raises(DeadlineReached):
            async with b.guard(), Deadline(0.01).limit(10):
                await asyncio.Event().wait()
    assert b.state == "closed"
    assert b.failures == 0


async def test_a_call_past_the_request_deadline_is_not_made_and_does_not_count(
    clock: ManualClock,
) -> None:
    b = breaker(clock, fail_max=1)
    called = False
    with pytest.raises(DeadlineReached):
        async with b.guard(), Deadline(0).limit(10):
            called = True
    assert not called
    assert b.state == "closed"


async def test_cancellation_of_our_own_request_does_not_count(clock: ManualClock) -> None:
    b = breaker(clock, fail_max=1)
    entered = asyncio.Event()

    async def slow_call() -> None:
        async with b.guard():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(slow_call())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "closed"
    assert b.failures == 0


async def test_an_answer_is_not_a_failure_and_resets_the_count(clock: ManualClock) -> None:
    b = breaker(clock, fail_max=2)
    await fail(b, ConnectionError("down"))
    assert b.failures == 1
    await fail(b, NotFoundAnswer())
    assert b.failures == 0
    await fail(b, ConnectionError("down"))
    assert b.state == "closed"


async def test_half_open_admits_exactly_one_probe(clock: ManualClock) -> None:
    b = breaker(clock, fail_max=1)
    await open_then_reset(b, clock)
    entered = asyncio.Event()
    release = asyncio.Event()

    async def probe() -> None:
        async with b.guard():
            entered.set()
            await release.wait()

    first = asyncio.create_task(probe())
    await entered.wait()
    assert b.state == "half-open"
    others = await asyncio.gather(*(probe() for _ in range(9)), return_exceptions=True)
    assert all(isinstance(r, BreakerOpen) for r in others)
    release.set()
    await first
    assert b.state == "closed"


async def test_failed_probe_opens_again(clock: ManualClock) -> None:
    b = breaker(clock, fail_max=1)
    await open_then_reset(b, clock)
    await fail(b, ConnectionError("still down"))
    assert b.state == "open"
    with pytest.raises(BreakerOpen):
        async with b.guard():
            pass


async def test_cancelled_probe_frees_the_half_open_slot(clock: ManualClock) -> None:
    b = breaker(clock, fail_max=1)
    await open_then_reset(b, clock)
    entered = asyncio.Event()

    async def probe() -> None:
        async with b.guard():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(probe())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "half-open"
    async with b.guard():
        pass
    assert b.state == "closed"


async def test_a_probe_the_request_deadline_ended_frees_the_slot_without_a_verdict(
    clock: ManualClock,
) -> None:
    b = breaker(clock, fail_max=1)
    await open_then_reset(b, clock)
    with pytest.raises(DeadlineReached):
        async with b.guard(), Deadline(0.01).limit(10):
            await asyncio.Event().wait()
    # Neither reopened nor closed: the next caller is the probe.
    assert b.state == "half-open"
    async with b.guard():
        pass
    assert b.state == "closed"


async def test_state_changes_are_logged(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    b = breaker(clock, fail_max=1)
    with caplog.at_level(logging.WARNING, logger="gateway.breaker"):
        await open_then_reset(b, clock)
        async with b.guard():
            pass
    messages = [r.getMessage() for r in caplog.records]
    assert "breaker dep: closed -> open" in messages
    assert "breaker dep: open -> half-open" in messages
    assert "breaker dep: half-open -> closed" in messages


async def test_the_limit_says_which_limit_ended_the_call() -> None:
    with pytest.raises(TimeoutError) as own:
        async with Deadline(10).limit(0.01):
            await asyncio.Event().wait()
    assert type(own.value) is TimeoutError
    with pytest.raises(DeadlineReached):
        async with Deadline(0.01).limit(10):
            await asyncio.Event().wait()
    with pytest.raises(DeadlineReached):
        async with Deadline(0.01).limit():
            await asyncio.Event().wait()
    # A TimeoutError of the call's own passes through as it is.
    with pytest.raises(TimeoutError) as inner:
        async with Deadline(0.01).limit(10):
            raise TimeoutError("inner")
    assert type(inner.value) is TimeoutError
