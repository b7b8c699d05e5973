"""The event-loop lag monitor sees the loop held up by a blocking callback, and the
garbage collector's pauses are timed and kept short."""

from __future__ import annotations

import asyncio
import gc
import time

from gateway.loop_lag import GC_PAUSE, LOOP_LAG, LoopLagMonitor, settle_heap


def _at_least(seconds: float) -> float:
    """Samples of the lag histogram at or above ``seconds`` (a bucket bound)."""
    total = 0.0
    below = 0.0
    for metric in LOOP_LAG.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                total = sample.value
            if sample.name.endswith("_bucket") and float(sample.labels["le"]) < seconds:
                below = max(below, sample.value)
    return total - below


async def test_a_blocked_loop_shows_as_lag() -> None:
    monitor = LoopLagMonitor(interval_s=0.01)
    before = _at_least(0.05)
    await monitor.start()
    try:
        async with asyncio.timeout(30):
            while monitor.samples < 2:
                await asyncio.sleep(0.01)
            # A blocking call on the loop: the monitor's timer cannot run for 0.2 s at least.
            time.sleep(0.2)
            seen = monitor.samples
            while monitor.samples <= seen:
                await asyncio.sleep(0.01)
    finally:
        await monitor.stop()
    assert _at_least(0.05) > before


def _pauses(generation: int) -> float:
    for metric in GC_PAUSE.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels["generation"] == str(generation):
                return sample.value
    return 0.0


def test_settling_the_heap_keeps_start_up_out_of_collections_and_times_them() -> None:
    built_at_start_up = [[n] for n in range(10_000)]
    before = _pauses(2)
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(built_at_start_up)
        tracked = len(gc.get_objects())
        assert tracked < gc.get_freeze_count()
        gc.collect()
        assert _pauses(2) > before
    finally:
        gc.unfreeze()
