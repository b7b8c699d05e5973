"""The time budget of one request, which every dependency call spends from."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType


class DeadlineReached(TimeoutError):
    """The request's deadline, not the dependency, ended a call (or kept it from starting).

    It says nothing about the dependency's health: breakers count it neither as a failure
    nor as a success.
    """


class Deadline:
    """A point in monotonic time after which nothing of the request may run."""

    __slots__ = ("budget_s", "expires_at")

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.expires_at = time.monotonic() + budget_s

    @classmethod
    def until(cls, expires_at: float) -> Deadline:
        """The deadline at ``expires_at`` on the monotonic clock."""
        deadline = cls.__new__(cls)
        deadline.expires_at = expires_at
        deadline.budget_s = max(0.0, expires_at - time.monotonic())
        return deadline

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.expires_at - time.monotonic())

    def limit(self, limit_s: float | None = None) -> CallLimit:
        """Bound one call by its own limit (if any), cut to what the request has left.

        ``async with deadline.limit(timeout_s):`` raises :class:`TimeoutError` when the
        call's own limit elapsed, and :class:`DeadlineReached` when the request's deadline
        ended it first or had already passed (then the body does not run).
        """
        return CallLimit(self, limit_s)

    @asynccontextmanager
    async def holding(self, slots: asyncio.Semaphore) -> AsyncIterator[None]:
        """Hold one of ``slots`` (a pool's connections), waiting at most until the deadline.

        Raises:
            DeadlineReached: none was free in time; waiting for our own pool is no
                dependency's failure.
        """
        if slots.locked():
            async with self.limit():
                await slots.acquire()
        else:
            await slots.acquire()  # free: returns at once, no timer needed
        try:
            yield
        finally:
            slots.release()

    def reserving(self, reserve_s: float) -> Deadline:
        """A deadline ``reserve_s`` earlier, for a stage that must leave time to later ones."""
        earlier = Deadline.__new__(Deadline)
        earlier.budget_s = max(0.0, self.budget_s - reserve_s)
        earlier.expires_at = self.expires_at - reserve_s
        return earlier


class CallLimit:
    """The async context manager of :meth:`Deadline.limit`.

    Which of the two limits ends the call is known when it starts: the earlier one. A
    timeout is the dependency's only when its own limit was the earlier.

    When the limit comes, the call is cancelled two loop turns later, not at once: a
    reply that arrived while this process was too busy to read it (a burst keeps the
    event loop from polling sockets) is read first. A dependency is then blamed only
    for a reply that had not arrived when the loop looked, never for our own delay.
    """

    __slots__ = ("_cut", "_deadline", "_handle", "_limit_s", "_loop", "_timeout")

    def __init__(self, deadline: Deadline, limit_s: float | None) -> None:
        self._deadline = deadline
        self._limit_s = limit_s
        self._cut = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.Handle | None = None
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> None:
        now = time.monotonic()
        expires_at = self._deadline.expires_at
        if expires_at <= now:
            raise DeadlineReached("the request's deadline has passed")
        if self._limit_s is not None and now + self._limit_s < expires_at:
            expires_at = now + self._limit_s
        else:
            self._cut = True
        self._loop = loop = asyncio.get_running_loop()
        self._timeout = asyncio.timeout(None)
        await self._timeout.__aenter__()
        self._handle = loop.call_at(loop.time() + expires_at - now, self._due)

    def _due(self) -> None:
        # The I/O this turn polled is handed to its readers before the next turn...
        assert self._loop is not None
        self._handle = self._loop.call_soon(self._expire)

    def _expire(self) -> None:
        # ...and their tasks run before the cancellation this schedules.
        assert self._loop is not None and self._timeout is not None
        self._handle = None
        self._timeout.reschedule(self._loop.time())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._timeout is not None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        try:
            await self._timeout.__aexit__(exc_type, exc, traceback)
        except TimeoutError as timed_out:
            if self._cut:
                raise DeadlineReached("the request's deadline ended the call") from timed_out
            raise
