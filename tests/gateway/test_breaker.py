"""DependencyBreaker: pybreaker's states made right for coroutines."""

from __future__ import annotations

import asyncio
import logging

import pytest

from contracts.registry import BreakerPolicy
from gateway.breaker import BreakerOpen, DependencyBreaker


class NotFoundAnswer(Exception):
    pass


def breaker(fail_max: int = 3, reset_ms: int = 100) -> DependencyBreaker:
    return DependencyBreaker(
        "dep",
        BreakerPolicy(fail_max=fail_max, reset_timeout_ms=reset_ms),
        is_answer=lambda exc: isinstance(exc, NotFoundAnswer),
    )


async def fail(b: DependencyBreaker, exc: Exception) -> None:
    with pytest.raises(type(exc)):
        async with b.guard():
            await asyncio.sleep(0)
            raise exc


async def test_failures_open_the_breaker_and_then_calls_are_refused() -> None:
    b = breaker(fail_max=3)
    for _ in range(3):
        await fail(b, ConnectionError("down"))
    assert b.state == "open"
    called = False
    with pytest.raises(BreakerOpen) as refused:
        async with b.guard():
            called = True
    assert not called
    assert 0 < refused.value.retry_after_s <= 0.1


async def test_timeouts_count_as_failures() -> None:
    b = breaker(fail_max=2)
    for _ in range(2):
        with pytest.raises(TimeoutError):
            async with b.guard(), asyncio.timeout(0.01):
                await asyncio.sleep(1)
    assert b.state == "open"


async def test_cancellation_of_our_own_request_does_not_count() -> None:
    b = breaker(fail_max=1)

    async def slow_call() -> None:
        async with b.guard():
            await asyncio.sleep(10)

    task = asyncio.create_task(slow_call())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "closed"
    assert b.failures == 0


async def test_an_answer_is_not_a_failure_and_resets_the_count() -> None:
    b = breaker(fail_max=2)
    await fail(b, ConnectionError("down"))
    assert b.failures == 1
    await fail(b, NotFoundAnswer())
    assert b.failures == 0
    await fail(b, ConnectionError("down"))
    assert b.state == "closed"


async def test_half_open_admits_exactly_one_probe() -> None:
    b = breaker(fail_max=1, reset_ms=50)
    await fail(b, ConnectionError("down"))
    await asyncio.sleep(0.06)
    entered = 0
    release = asyncio.Event()

    async def call() -> None:
        nonlocal entered
        async with b.guard():
            entered += 1
            await release.wait()

    tasks = [asyncio.create_task(call()) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert entered == 1
    assert b.state == "half-open"
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert sum(isinstance(r, BreakerOpen) for r in results) == 9
    assert b.state == "closed"


async def test_failed_probe_opens_again() -> None:
    b = breaker(fail_max=1, reset_ms=50)
    await fail(b, ConnectionError("down"))
    await asyncio.sleep(0.06)
    await fail(b, ConnectionError("still down"))
    assert b.state == "open"
    with pytest.raises(BreakerOpen):
        async with b.guard():
            pass


async def test_cancelled_probe_frees_the_half_open_slot() -> None:
    b = breaker(fail_max=1, reset_ms=50)
    await fail(b, ConnectionError("down"))
    await asyncio.sleep(0.06)

    async def probe() -> None:
        async with b.guard():
            await asyncio.sleep(10)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with b.guard():
        pass
    assert b.state == "closed"


async def test_state_changes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    b = breaker(fail_max=1, reset_ms=50)
    with caplog.at_level(logging.WARNING, logger="gateway.breaker"):
        await fail(b, ConnectionError("down"))
        await asyncio.sleep(0.06)
        async with b.guard():
            pass
    messages = [r.getMessage() for r in caplog.records]
    assert "breaker dep: closed -> open" in messages
    assert "breaker dep: open -> half-open" in messages
    assert "breaker dep: half-open -> closed" in messages
