"""Retries that cost nothing when the first attempt succeeds.

Building tenacity's retry state costs tens of microseconds per call, which the hot path
pays for every source and model call although most succeed at once. So the first
attempt runs bare; on a failure tenacity takes over with that failure replayed as its
own first attempt, and its stop, wait and retry predicate apply exactly as if it had
made every call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying

T = TypeVar("T")


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    retrying: Callable[[], AsyncRetrying],
    retried: type[Exception],
) -> T:
    """``await call()``, retried as ``retrying()`` says when it raises ``retried``."""
    try:
        return await call()
    except retried as exc:
        first_failure: Exception | None = exc
    async for attempt in retrying():
        with attempt:
            if first_failure is not None:
                failure, first_failure = first_failure, None
                raise failure
            return await call()
    raise AssertionError("tenacity stops by raising")  # pragma: no cover
