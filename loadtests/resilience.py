"""Resilience benchmark: the same fixed-rate load on /score with every dependency
healthy, then with one source hanging, then with Redis stopped.

Starts its own stack (the dev stack with realistic source latency, on a Redis server
of its own so that it can stop it) and prints, per phase, p50/p95/p99 latency from
the scheduled send time, error rates and the share of degraded answers. Writes the
results to ``loadtests/results/resilience-<time>.json``.

    .venv/bin/python loadtests/resilience.py --rate 100 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
from open_loop import run_phase

from scoregate_dev.broker import free_port, wait_for_port
from scoregate_dev.stack import DevStack

RESULTS = Path(__file__).parent / "results"


def score_body(customers: int) -> Any:
    def body(rng: random.Random) -> dict[str, Any]:
        return {
            "model": "fraud",
            "entities": {
                "customer_id": f"c-{rng.randint(1, customers)}",
                "merchant_id": f"m-{rng.randint(1, 20)}",
            },
            "context": {"amount": round(rng.lognormvariate(3.5, 1.0), 2), "card_present": False},
        }

    return body


async def start_redis(port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        shutil.which("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        stdout=asyncio.subprocess.DEVNULL,
    )
    await wait_for_port("127.0.0.1", port)
    return process


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()

    redis_port = free_port()
    redis = await start_redis(redis_port)
    os.environ["SCOREGATE_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    os.environ.setdefault(
        "SCOREGATE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/scoregate_bench"
    )
    stack = DevStack(port=args.port)
    phases: list[dict[str, Any]] = []
    try:
        await stack.start()
        await stack.seed()
        body = score_body(args.customers)
        url = f"{stack.url}/score"
        connector = aiohttp.TCPConnector(limit=512)
        async with aiohttp.ClientSession(
            connector=connector, headers=stack.headers("scorer")
        ) as session:
            await run_phase(session, url, "warmup", args.rate, args.warmup, body, seed=0)
            healthy = await run_phase(session, url, "healthy", args.rate, args.seconds, body)
            phases.append(healthy.summary())

            async with session.put(
                f"{stack.sources_url}/_faults/txn_stats", json={"mode": "hang"}
            ) as response:
                response.raise_for_status()
            hanging = await run_phase(
                session, url, "txn_stats hanging", args.rate, args.seconds, body, seed=2
            )
            phases.append(hanging.summary())
            async with session.delete(f"{stack.sources_url}/_faults") as response:
                response.raise_for_status()

            redis.terminate()
            await redis.wait()
            stopped = await run_phase(
                session, url, "redis stopped", args.rate, args.seconds, body, seed=3
            )
            phases.append(stopped.summary())
    finally:
        await stack.stop()
        if redis.returncode is None:
            redis.terminate()
            await redis.wait()

    healthy_p99 = phases[0]["p99_ms"]
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rate_per_s": args.rate,
        "seconds_per_phase": args.seconds,
        "phases": phases,
        "p99_ratio_hanging_to_healthy": round(phases[1]["p99_ms"] / healthy_p99, 2),
        "p99_ratio_redis_stopped_to_healthy": round(phases[2]["p99_ms"] / healthy_p99, 2),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"resilience-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    asyncio.run(main())
