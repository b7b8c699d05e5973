"""The event loop's lag, and the garbage collector's pauses that are one of its causes.

Everything a gateway process does shares one event loop, so a callback that runs long
(a large encode, a blocking call, a burst of background work) delays every request in
flight by as much. A timer that asks to wake every ``interval_s`` and measures how much
later it woke sees exactly that delay, whatever caused it.

A full collection of Python's garbage collector is such a callback: it walks every
tracked object of the process, the tens of thousands that importing Litestar, asyncpg,
aiokafka and OpenTelemetry and building the app leave behind, and takes tens of
milliseconds on this kind of machine. :func:`settle_heap` moves everything alive at
start-up out of the collector's sight (``gc.freeze``), so later collections walk only
what serving created; :data:`GC_PAUSE` shows what they still cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from typing import Any

from prometheus_client import Histogram

LOOP_LAG = Histogram(
    "scoregate_event_loop_lag_seconds",
    "How much later than due the event loop ran a timer (time it spent on other work)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

GC_PAUSE = Histogram(
    "scoregate_gc_pause_seconds",
    "How long each collection of the garbage collector held the process, by generation",
    ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
_PAUSES = [GC_PAUSE.labels(generation=str(generation)) for generation in range(3)]
_started_at = 0.0


def _time_collection(phase: str, info: dict[str, Any]) -> None:
    global _started_at
    if phase == "start":
        _started_at = time.perf_counter()
    else:
        _PAUSES[info["generation"]].observe(time.perf_counter() - _started_at)


def settle_heap() -> None:
    """Collect once, then keep every object alive now out of later collections.

    Call it when start-up is done, before serving: what start-up built lives as long as
    the process, and walking it again at every full collection only pauses requests.
    Collections are timed into :data:`GC_PAUSE` from now on.
    """
    gc.collect()
    gc.freeze()
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)


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
