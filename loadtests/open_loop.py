"""An open-loop load generator: requests go out on a fixed schedule, whatever the
server does, and latency counts from the scheduled send time, so a stalled server
cannot hide its queueing (no coordinated omission).

``run_phase`` drives an HTTP endpoint with POSTed JSON; ``run_calls`` drives any
coroutine (a Redis read, a database commit) on the same kind of schedule.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

Body = Callable[[random.Random], dict[str, Any]]
Answer = Callable[[int, bytes], None]
"""Called with the status and body of every answer (to collect decision ids, say)."""
Call = Callable[[int], Awaitable[object]]
"""One call of ``run_calls``, given its sequence number."""

_encode = msgspec.json.Encoder().encode


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
    elapsed_s: float = 0.0
    """From the first scheduled send to the last answer."""

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
            "achieved_per_s": round(ok / self.elapsed_s, 1) if self.elapsed_s else None,
            "elapsed_s": round(self.elapsed_s, 3),
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
    on_answer: Answer | None = None,
) -> PhaseResult:
    """Send ``rate`` requests per second for ``seconds`` to ``url`` (POST JSON).

    Latency counts only answered requests; ``on_answer`` sees every answer.
    """
    result = PhaseResult(name=name, rate=rate, seconds=seconds)
    rng = random.Random(seed)
    send_headers = {"content-type": "application/json", **(headers or {})}
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def one(_: int, scheduled: float) -> None:
        payload = _encode(body(rng))
        try:
            async with session.post(
                url, data=payload, headers=send_headers, timeout=timeout
            ) as response:
                data = await response.read()
                result.statuses[response.status] += 1
                if response.status == 200 and b'"degraded":true' in data:
                    result.degraded += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.errors[type(exc).__name__] += 1
            return
        result.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        if on_answer is not None:
            on_answer(response.status, data)

    result.elapsed_s = await open_loop(rate, seconds, one)
    return result


async def run_calls(
    name: str, rate: float, seconds: float, call: Call, timeout_s: float = 5.0
) -> PhaseResult:
    """Run ``call`` ``rate`` times per second for ``seconds``, open loop.

    A call that returns counts as status 200; one that raises counts as an error
    under its exception's class name.
    """
    result = PhaseResult(name=name, rate=rate, seconds=seconds)

    async def one(number: int, scheduled: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await call(number)
        except Exception as exc:  # any failure of the call is what the phase counts
            result.errors[type(exc).__name__] += 1
            return
        result.statuses[200] += 1
        result.latencies_ms.append((time.perf_counter() - scheduled) * 1000)

    result.elapsed_s = await open_loop(rate, seconds, one)
    return result


async def open_loop(
    rate: float, seconds: float, send: Callable[[int, float], Awaitable[None]]
) -> float:
    """Start ``send(number, scheduled)`` every ``1 / rate`` seconds, whatever came back.

    ``scheduled`` is the ``time.perf_counter()`` the send was due at; a send that
    starts late still measures from then. Returns the seconds from the first
    scheduled send until the last send has finished.
    """
    interval = 1.0 / rate
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    in_flight: set[asyncio.Task[None]] = set()
    for i in range(total):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(i, scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    return time.perf_counter() - start
