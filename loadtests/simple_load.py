"""A simple closed-loop load on ``/score``: N concurrent clients for a fixed time.

Usage (against a running stack, e.g. ``scoregate dev``)::

    SCOREGATE_KEY=<scorer key> python loadtests/simple_load.py --concurrency 16 --seconds 20

Prints requests/s, status counts and latency percentiles. Customers are drawn from
the dev stack's seeded ids (``c-1`` .. ``c-200``, merchants ``m-1`` .. ``m-20``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from collections import Counter

import aiohttp


async def client(
    session: aiohttp.ClientSession,
    url: str,
    until: float,
    latencies: list[float],
    statuses: Counter[int],
    rng: random.Random,
    customers: int,
) -> None:
    while time.perf_counter() < until:
        body = {
            "model": "fraud",
            "entities": {
                "customer_id": f"c-{rng.randint(1, customers)}",
                "merchant_id": f"m-{rng.randint(1, 20)}",
            },
            "context": {"amount": round(rng.lognormvariate(3.5, 1.0), 2), "card_present": False},
        }
        started = time.perf_counter()
        async with session.post(f"{url}/score", json=body) as response:
            await response.read()
            statuses[response.status] += 1
        latencies.append((time.perf_counter() - started) * 1000)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument(
        "--key", default=os.environ.get("SCOREGATE_KEY", ""), help="a scorer key ($SCOREGATE_KEY)"
    )
    args = parser.parse_args()
    rng = random.Random(1)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    headers = {"Authorization": f"Bearer {args.key}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        warm: list[float] = []
        until = time.perf_counter() + args.warmup
        await asyncio.gather(
            *(
                client(session, args.url, until, warm, Counter(), rng, args.customers)
                for _ in range(args.concurrency)
            )
        )
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        started = time.perf_counter()
        until = started + args.seconds
        await asyncio.gather(
            *(
                client(session, args.url, until, latencies, statuses, rng, args.customers)
                for _ in range(args.concurrency)
            )
        )
        elapsed = time.perf_counter() - started
    report = {
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "statuses": dict(statuses),
        "p50_ms": round(statistics.median(latencies), 2),
        "p90_ms": round(percentile(latencies, 0.90), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
