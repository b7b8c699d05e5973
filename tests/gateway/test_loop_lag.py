"""The event-loop lag monitor sees the loop held up by a blocking callback."""

from __future__ import annotations

import asyncio
import time

from gateway.loop_lag import LOOP_LAG, LoopLagMonitor


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
