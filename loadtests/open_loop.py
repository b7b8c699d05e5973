"""An open-loop load generator: requests go out on a fixed schedule, whatever the
server does, and latency counts from the scheduled send time, so a stalled server
cannot hide its queueing (no coordinated omission)."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

Body = Callable[[random.Random], dict[str, Any]]


@dataclass
class PhaseResult:
    """What one phase of fixed-rate load saw."""

    name: str
    rate: float
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    degraded: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        """Counts, error rates and latency percentiles."""
        sent = sum(self.statuses.values()) + sum(self.errors.values())
        ok = self.statuses.get(200, 0)
        server_errors = sum(n for status, n in self.statuses.items() if status >= 500)
        return {
            "phase": self.name,
            "rate_per_s": self.rate,
            "seconds": self.seconds,
            "sent": sent,
            "ok": ok,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "client_errors": dict(self.errors),
            "error_rate": round((sent - ok) / sent, 5) if sent else None,
            "server_error_rate": round(server_errors / sent, 5) if sent else None,
            "degraded_share": round(self.degraded / ok, 4) if ok else None,
            "p50_ms": percentile(self.latencies_ms, 0.50),
            "p95_ms": percentile(self.latencies_ms, 0.95),
            "p99_ms": percentile(self.latencies_ms, 0.99),
            "max_ms": round(max(self.latencies_ms), 2) if self.latencies_ms else None,
        }


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank), rounded to 0.01 ms."""
    if not values:
        return None
    if q == 0.5:
        return round(statistics.median(values), 2)
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def run_phase(
    session: aiohttp.ClientSession,
    url: str,
    name: str,
    rate: float,
    seconds: float,
    body: Body,
    seed: int = 1,
    timeout_s: float = 5.0,
    headers: dict[str, str] | None = None,
) -> PhaseResult:
    """Send ``rate`` requests per second for ``seconds`` to ``url`` (POST JSON)."""
    result = PhaseResult(name=name, rate=rate, seconds=seconds)
    rng = random.Random(seed)
    interval = 1.0 / rate
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    in_flight: set[asyncio.Task[None]] = set()

    async def one(scheduled: float, payload: dict[str, Any]) -> None:
        try:
            async with session.post(
                url, json=payload, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                data = await response.read()
                result.statuses[response.status] += 1
                if response.status == 200 and b'"degraded":true' in data:
                    result.degraded += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.errors[type(exc).__name__] += 1
            return
        result.latencies_ms.append((time.perf_counter() - scheduled) * 1000)

    for i in range(total):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled, body(rng)))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    return result
