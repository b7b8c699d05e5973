"""Circuit breakers for asyncio, on top of pybreaker's state machine.

pybreaker counts failures and moves between states, but it has no asyncio support
of its own: ``breaker.call(async_fn)`` would count an un-awaited coroutine as a
success, and its half-open state lets every caller through. :class:`DependencyBreaker`
keeps pybreaker's states and listeners and adds what a coroutine needs:

- the call is awaited inside the guard, so failures and timeouts count;
- cancellation of our own request counts neither way;
- answers that are not failures (a source's 404) count as successes;
- half-open admits exactly one probe; everyone else takes the open path.
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


def _never(exc: BaseException) -> bool:
    return False


class DependencyBreaker:
    """One circuit breaker per dependency (a source, a model endpoint, Redis).

    Use as ``async with breaker.guard(): await call()``. Exceptions for which
    ``is_answer(exc)`` is true are answers from a healthy dependency, not failures.
    """

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        is_answer: Callable[[BaseException], bool] = _never,
    ) -> None:
        self.name = name
        self._is_answer = is_answer
        self._reset_timeout_s = policy.reset_timeout_ms / 1000
        self._cb = pybreaker.CircuitBreaker(
            fail_max=policy.fail_max,
            reset_timeout=self._reset_timeout_s,
            success_threshold=policy.success_threshold,
            name=name,
            listeners=[_StateLog()],
        )
        self._probing = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self._cb.current_state)

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far."""
        return int(self._cb.fail_counter)

    def _retry_after(self) -> float:
        opened_at = self._cb._state_storage.opened_at
        if opened_at is None:
            return self._reset_timeout_s
        elapsed = time.time() - opened_at.timestamp()
        return max(0.0, self._reset_timeout_s - elapsed)

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
        except asyncio.CancelledError:
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
