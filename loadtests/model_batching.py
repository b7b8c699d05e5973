"""Model calls batched or not: the gateway's model client against the sample model server.

The sample model server runs as a child process; this process drives ``ModelClient``
(the gateway's own, on uvloop, with the gateway's connector settings) closed loop:
``concurrency`` tasks, each scoring one row after another, as many ``/score`` requests
in flight would. Each task may first spend ``--work-us`` of CPU on the event loop,
standing in for the rest of a ``/score`` (features, audit), so that rows arrive the
way they do in a busy gateway.

Batching off (``max_batch_size = 1``) and on (``max_batch_size = 32``, one call in
flight) run in alternating rounds at each concurrency; the figures are the medians of
the rounds: rows per second, this process's CPU per row (the client), the model
server's CPU per row (its process, from ``/proc``), model calls per row and latency.

    .venv/bin/python loadtests/model_batching.py
    .venv/bin/python loadtests/model_batching.py --rounds 7 --seconds 4 --work-us 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from cpu_meter import TICKS_PER_S, process_ticks

from contracts.registry import Model
from gateway.deadline import Deadline
from gateway.model_client import ModelClient
from scoregate_dev.broker import free_port, wait_for_port
from scoregate_dev.sample_model import FEATURES

BATCH_SIZE = 32
VECTOR = [(name, "float64") for name in FEATURES]


def model(url: str, max_batch_size: int) -> Model:
    return Model(
        name="fraud",
        version="3",
        subject="customer",
        endpoint=url,
        features=list(FEATURES[:-2]),
        timeout_ms=1000,
        deadline_ms=2000,
        max_batch_size=max_batch_size,
    )


def row(n: int) -> list[Any]:
    return [n % 7, 100.0 + n % 97, n % 11, 30 + n % 900, 1 + n % 3, 0.1, 0.01, 50.0, n % 2 == 0]


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def stats(http: aiohttp.ClientSession, url: str, reset: bool = False) -> dict[str, int]:
    async with http.get(f"{url}/_stats") as response:
        counts: dict[str, int] = await response.json()
    if reset:
        async with http.delete(f"{url}/_stats"):
            pass
    return counts


async def round_of(
    client: ModelClient,
    http: aiohttp.ClientSession,
    url: str,
    server_pid: int,
    concurrency: int,
    seconds: float,
    work_s: float,
) -> dict[str, float]:
    await stats(http, url, reset=True)
    latencies: list[float] = []
    failures = 0
    stop_at = time.perf_counter() + seconds

    async def worker(start: int) -> None:
        nonlocal failures
        n = start
        while time.perf_counter() < stop_at:
            if work_s:
                spin(work_s)
            began = time.perf_counter()
            try:
                await client.infer(f"d-{n}", row(n), Deadline(2.0))
            except Exception:
                failures += 1
            else:
                latencies.append(time.perf_counter() - began)
            n += concurrency

    server_before = process_ticks(server_pid) or 0
    cpu_before = time.process_time()
    wall_before = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - wall_before
    cpu = time.process_time() - cpu_before
    server_cpu = ((process_ticks(server_pid) or 0) - server_before) / TICKS_PER_S
    counts = await stats(http, url)
    rows = len(latencies)
    latencies.sort()
    return {
        "rows_per_s": rows / wall,
        "client_cpu_us_per_row": cpu / rows * 1e6,
        "client_cpu_us_per_row_less_work": (cpu - (rows + failures) * work_s) / rows * 1e6,
        "server_cpu_us_per_row": server_cpu / rows * 1e6,
        "calls_per_row": counts["infer_calls"] / max(1, counts["rows"]),
        "p50_ms": latencies[rows // 2] * 1000,
        "p99_ms": latencies[min(rows - 1, int(rows * 0.99))] * 1000,
        "failures": failures,
    }


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scoregate_dev.sample_model", "--port", str(port)
    )
    await wait_for_port("127.0.0.1", port)
    results: dict[str, Any] = {"settings": vars(args), "rows": []}
    try:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=128, keepalive_timeout=4.0)
        async with aiohttp.ClientSession(connector=connector) as http:
            clients = {
                "off": ModelClient(model(url, 1), VECTOR, http),  # type: ignore[arg-type]
                "on": ModelClient(model(url, BATCH_SIZE), VECTOR, http),  # type: ignore[arg-type]
            }
            for client in clients.values():  # warm the connections and the server
                await round_of(client, http, url, server.pid, 8, 0.5, 0)
            for concurrency in args.concurrency:
                rounds: dict[str, list[dict[str, float]]] = {name: [] for name in clients}
                for _ in range(args.rounds):
                    for name, client in clients.items():
                        rounds[name].append(
                            await round_of(
                                client,
                                http,
                                url,
                                server.pid,
                                concurrency,
                                args.seconds,
                                args.work_us / 1e6,
                            )
                        )
                for name in clients:
                    figures = medians(rounds[name])
                    results["rows"].append(
                        {"concurrency": concurrency, "batching": name, **figures}
                    )
                    print(
                        f"c={concurrency:4} batching {name:3}: {figures['rows_per_s']:8.0f} rows/s"
                        f"  client {figures['client_cpu_us_per_row']:6.1f} us/row"
                        f" ({figures['client_cpu_us_per_row_less_work']:6.1f} less work)"
                        f"  server {figures['server_cpu_us_per_row']:6.1f} us/row"
                        f"  calls/row {figures['calls_per_row']:.3f}"
                        f"  p50 {figures['p50_ms']:6.2f} ms  p99 {figures['p99_ms']:6.2f} ms"
                        f"  failures {figures['failures']:.0f}",
                        flush=True,
                    )
    finally:
        server.terminate()
        await server.wait()
    return results


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--work-us", type=float, default=0.0, help="CPU per row besides the call")
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    figures = uvloop.run(main(arguments))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(figures, indent=2))
