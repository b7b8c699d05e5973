"""Circuit breakers for asyncio, on top of pybreaker's state machine.

pybreaker counts failures and moves between states, but it has no asyncio support
of its own: ``breaker.call(async_fn)`` would count an un-awaited coroutine as a
success, and its half-open state lets every caller through. :class:`DependencyBreaker`
keeps pybreaker's states and listeners and adds what a coroutine needs:

- the call is awaited inside the guard, so failures and the dependency's own timeouts
  count;
- what the request did to itself counts neither way: its cancellation, and a timeout
  that its deadline (:class:`~gateway.deadline.DeadlineReached`) rather than the
  dependency's own limit caused;
- answers that are not failures (a source's 404) count as successes;
- half-open admits exactly one probe; everyone else takes the open path; a probe that
  ends without a verdict frees the slot for the next caller;
- the reset timeout is measured on a clock of the breaker's own (monotonic, and
  injectable), not on pybreaker's wall-clock ``opened_at``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pybreaker

from contracts.registry import BreakerPolicy
from gateway.deadline import DeadlineReached

log = logging.getLogger(__name__)


class BreakerOpen(Exception):
    """The dependency's breaker is open: the call was not attempted."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit breaker for {name} is open")
        self.name = name
        self.retry_after_s = retry_after_s


class _StateLog(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        log.warning(
            "breaker %s: %s -> %s",
            cb.name,
            getattr(old, "name", old),
            getattr(new, "name", new),
        )


class _OpenedAt(pybreaker.CircuitBreakerListener):
    """Notes, on the breaker's clock, when the circuit last opened."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.at: float | None = None

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        if getattr(new, "name", new) == pybreaker.STATE_OPEN:
            self.at = self.clock()


def _never(exc: BaseException) -> bool:
    return False


class DependencyBreaker:
    """One circuit breaker per dependency (a source, a model endpoint, Redis).

    Use as ``async with breaker.guard(): await call()``. Exceptions for which
    ``is_answer(exc)`` is true are answers from a healthy dependency, not failures.

    Args:
        name: the dependency, in logs and ``/health/ready``.
        policy: failures to open, time before a probe, successes to close.
        is_answer: which exceptions are answers rather than failures.
        clock: seconds on a monotonic clock; the reset timeout is measured on it.
    """

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        is_answer: Callable[[BaseException], bool] = _never,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._is_answer = is_answer
        self._reset_timeout_s = policy.reset_timeout_ms / 1000
        self._opened = _OpenedAt(clock)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=policy.fail_max,
            reset_timeout=self._reset_timeout_s,
            success_threshold=policy.success_threshold,
            name=name,
            listeners=[_StateLog(), self._opened],
        )
        self._probing = False

    @property
    def clock(self) -> Callable[[], float]:
        """The clock the reset timeout is measured on."""
        return self._opened.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        # A breaker that is open stays open for its full reset timeout on the new clock.
        if self._opened.at is not None:
            self._opened.at = clock()
        self._opened.clock = clock

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self._cb.current_state)

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far."""
        return int(self._cb.fail_counter)

    def _retry_after(self) -> float:
        opened_at = self._opened.at
        if opened_at is None:
            return self._reset_timeout_s
        return max(0.0, self._reset_timeout_s - (self._opened.clock() - opened_at))

    def _admit(self) -> bool:
        """Decide whether a call may go ahead; True when it is the half-open probe."""
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return False
        if state == pybreaker.STATE_OPEN and self._retry_after() > 0:
            raise BreakerOpen(self.name, self._retry_after())
        if self._probing:
            raise BreakerOpen(self.name, self._reset_timeout_s)
        if state == pybreaker.STATE_OPEN:
            self._cb.half_open()
        self._probing = True
        return True

    def _record_success(self) -> None:
        if self._cb.current_state == pybreaker.STATE_OPEN:
            return
        self._cb.call(lambda: None)

    def _record_failure(self, exc: BaseException) -> None:
        if self._cb.current_state == pybreaker.STATE_OPEN:
            return

        def fail() -> None:
            raise exc

        try:
            self._cb.call(fail)
        except (pybreaker.CircuitBreakerError, type(exc)):
            pass

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Run the body under the breaker; raises :class:`BreakerOpen` when refused."""
        probe = self._admit()
        try:
            yield
        except (asyncio.CancelledError, DeadlineReached):
            # The request gave up or ran out of time: no verdict on the dependency.
            raise
        except Exception as exc:
            if self._is_answer(exc):
                self._record_success()
            else:
                self._record_failure(exc)
            raise
        else:
            self._record_success()
        finally:
            if probe:
                self._probing = False
