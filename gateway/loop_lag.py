"""The event loop's lag: how late a timer due every interval actually runs.

Everything a gateway process does shares one event loop, so a callback that runs long
(a large encode, a blocking call, a burst of background work) delays every request in
flight by as much. A timer that asks to wake every ``interval_s`` and measures how much
later it woke sees exactly that delay, whatever caused it.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Histogram

LOOP_LAG = Histogram(
    "scoregate_event_loop_lag_seconds",
    "How much later than due the event loop ran a timer (time it spent on other work)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class LoopLagMonitor:
    """Samples the running loop's lag every ``interval_s`` into :data:`LOOP_LAG`.

    Args:
        interval_s: how often to sample; each sample costs one timer wake-up.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.samples = 0
        """Lags sampled so far."""

    async def start(self) -> None:
        """Start sampling in the background on the running loop."""
        self._task = asyncio.create_task(self._run(), name="scoregate-loop-lag")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self._interval_s
            await asyncio.sleep(self._interval_s)
            LOOP_LAG.observe(max(0.0, loop.time() - due))
            self.samples += 1

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
