"""call_with_retries: a bare first attempt, then tenacity with that failure replayed."""

from __future__ import annotations

import pytest
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_none

from gateway.retries import call_with_retries


class Flaky(Exception):
    pass


def retrying(attempts: int) -> AsyncRetrying:
    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_none(),
        retry=retry_if_exception_type(Flaky),
        reraise=True,
    )


def counting(outcomes: list[Exception | str]) -> tuple[list[int], object]:
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return calls, call


async def test_success_at_once_makes_one_call() -> None:
    calls, call = counting(["ok"])
    assert await call_with_retries(call, lambda: retrying(3), Flaky) == "ok"  # type: ignore[arg-type]
    assert len(calls) == 1


async def test_a_failure_counts_as_tenacitys_first_attempt() -> None:
    calls, call = counting([Flaky(), Flaky(), "ok"])
    assert await call_with_retries(call, lambda: retrying(3), Flaky) == "ok"  # type: ignore[arg-type]
    assert len(calls) == 3


async def test_attempts_are_counted_with_the_bare_one() -> None:
    calls, call = counting([Flaky("1"), Flaky("2"), Flaky("3")])
    with pytest.raises(Flaky, match="2"):
        await call_with_retries(call, lambda: retrying(2), Flaky)  # type: ignore[arg-type]
    assert len(calls) == 2


async def test_other_errors_are_not_retried() -> None:
    calls, call = counting([ValueError("bad"), "ok"])
    with pytest.raises(ValueError, match="bad"):
        await call_with_retries(call, lambda: retrying(3), Flaky)  # type: ignore[arg-type]
    assert len(calls) == 1
