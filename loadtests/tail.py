"""The tail at a light load: ``/score`` p99 per round at a fixed rate, and what held the loop.

Starts the dev stack (the gateway pinned to one core, everything else this script
starts on the others, a database and key prefix of the run's own), then runs ``/score``
open loop at ``--rate`` (default 100/s) on customers whose features the stack's streams
keep fresh, in rounds. Per round it reports p50/p99/max and, from the gateway's
``/metrics`` before and after the round, how many event-loop lag samples reached 5, 10
and 25 ms (``scoregate_event_loop_lag_seconds``) and how many garbage collections of
each generation paused the process for 1, 5 and 10 ms or more
(``scoregate_gc_pause_seconds``). A round whose p99 jumps shows beside it whether the
loop was held, and whether by the collector.

With ``--compare DIR`` (another checkout), its stack is measured the same way after
this one's, then this one's again, and so on, ``--stacks`` times in all: the two
codes side by side on the same machine state, the medians of their rounds compared.

    .venv/bin/python loadtests/tail.py                      # 6 rounds of 20 s at 100/s
    .venv/bin/python loadtests/tail.py --compare /tmp/before --stacks 4

Writes ``loadtests/results/tail-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop
from open_loop import run_phase
from prometheus_client.parser import text_string_to_metric_families
from traffic import MERCHANTS, fresh_customers

from scoregate_dev.broker import free_port
from scoregate_dev.stack import DevStack

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATABASE = "postgresql://postgres@127.0.0.1:5432/scoregate_tail"
LAG_BOUNDS = (0.005, 0.01, 0.025)
PAUSE_BOUNDS = (0.001, 0.005, 0.01)


def histogram(text: str, name: str) -> dict[tuple[str, float], float]:
    """Cumulative bucket counts of a histogram by (generation or "", upper bound)."""
    buckets: dict[tuple[str, float], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                key = (sample.labels.get("generation", ""), float(sample.labels["le"]))
                buckets[key] = sample.value
    return buckets


def at_least(
    before: dict[tuple[str, float], float],
    after: dict[tuple[str, float], float],
    bound: float,
    label: str = "",
) -> int:
    """Observations between the two scrapes at or above ``bound`` (a bucket bound)."""

    def count(buckets: dict[tuple[str, float], float]) -> float:
        total = buckets.get((label, float("inf")), 0.0)
        below = max((v for (g, le), v in buckets.items() if g == label and le < bound), default=0)
        return total - below

    return round(count(after) - count(before))


async def scrape(session: aiohttp.ClientSession, stack: DevStack) -> str:
    async with session.get(f"{stack.url}/metrics", headers=stack.headers("operator")) as answer:
        answer.raise_for_status()
        return await answer.text()


async def measure(stack: DevStack, args: argparse.Namespace, label: str) -> list[dict[str, Any]]:
    """The rounds of one stack."""
    fresh = fresh_customers(args.customers)
    prefix = uuid.uuid4().hex[:6]

    def body(rng: random.Random) -> dict[str, Any]:
        return {
            "model": "fraud",
            "entities": {
                "customer_id": f"c-{rng.choice(fresh)}",
                "merchant_id": f"m-{rng.randint(1, MERCHANTS)}",
            },
            "context": {"amount": round(rng.uniform(1, 500), 2), "card_present": True},
            "request_id": f"{prefix}-{uuid.uuid4().hex}",
        }

    url, headers = f"{stack.url}/score", stack.headers("scorer")
    rounds = []
    async with aiohttp.ClientSession() as session:
        await run_phase(session, url, "warm-up", args.rate, 5, body, headers=headers)
        for number in range(args.rounds):
            before = await scrape(session, stack)
            result = await run_phase(
                session,
                url,
                f"round {number}",
                args.rate,
                args.seconds,
                body,
                seed=number,
                headers=headers,
            )
            after = await scrape(session, stack)
            summary = result.summary()
            lag = "scoregate_event_loop_lag_seconds"
            pause = "scoregate_gc_pause_seconds"
            lags = histogram(before, lag), histogram(after, lag)
            pauses = histogram(before, pause), histogram(after, pause)
            row = {
                "code": label,
                "round": number,
                "ok": summary["ok"],
                "error_rate": summary["error_rate"],
                "p50_ms": summary["p50_ms"],
                "p99_ms": summary["p99_ms"],
                "max_ms": summary["max_ms"],
                "loop_lag_at_least": {str(b): at_least(*lags, b) for b in LAG_BOUNDS},
                "gc_pauses_at_least": {
                    str(g): {str(b): at_least(*pauses, b, str(g)) for b in PAUSE_BOUNDS}
                    for g in range(3)
                },
            }
            rounds.append(row)
            print(
                f"{label:<8} round {number}: p50 {row['p50_ms']} p99 {row['p99_ms']}"
                f" max {row['max_ms']} ms  errors {row['error_rate']}"
                f"  lag>=5/10/25ms {list(row['loop_lag_at_least'].values())}"
                "  gc>=1/5/10ms by gen "
                + " ".join(str(list(by.values())) for by in row["gc_pauses_at_least"].values()),
                flush=True,
            )
    return rounds


@contextmanager
def code_of(directory: Path | None) -> Iterator[None]:
    """Run the stack's children from ``directory``'s code (None: this checkout's).

    ``python -m`` puts the working directory first on a child's path, so the children
    start there too.
    """
    saved, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
    if directory is not None:
        paths = [str(directory), str(directory / "sample")]
        os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([saved] if saved else []))
        os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(cwd)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


async def fresh_database() -> None:
    conn = await asyncpg.connect(DATABASE.rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute('DROP DATABASE IF EXISTS "scoregate_tail" WITH (FORCE)')
    finally:
        await conn.close()


async def one_stack(args: argparse.Namespace, label: str, directory: Path | None) -> list[Any]:
    await fresh_database()
    os.environ["SCOREGATE_DATABASE_URL"] = DATABASE
    os.environ["SCOREGATE_REDIS_PREFIX"] = f"sg-tail-{uuid.uuid4().hex[:6]}"
    os.environ.setdefault("SCOREGATE_PII_KEY", uuid.uuid4().hex)
    gateway_cpus = None if args.no_pin else str(args.gateway_cpu)
    with code_of(directory):
        stack = DevStack(port=free_port(), customers=args.customers, gateway_cpus=gateway_cpus)
        try:
            await stack.start()
            await stack.seed()
            return await measure(stack, args, label)
        finally:
            await stack.stop()


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float | None:
        values = [r[key] for r in rounds if r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    return {
        "rounds": len(rounds),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "worst_p99_ms": max((r["p99_ms"] for r in rounds if r["p99_ms"]), default=None),
        "rounds_with_p99_over_10ms": sum(1 for r in rounds if (r["p99_ms"] or 0) > 10),
        "loop_lag_samples_at_least_10ms": sum(r["loop_lag_at_least"]["0.01"] for r in rounds),
        "gc_pauses_at_least_5ms": sum(
            by["0.005"] for r in rounds for by in r["gc_pauses_at_least"].values()
        ),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per stack")
    parser.add_argument("--seconds", type=float, default=20.0, help="per round")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--gateway-cpu", type=int, default=0)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--compare", type=Path, help="another checkout, measured alternately")
    parser.add_argument("--stacks", type=int, default=2, help="with --compare: stacks in all")
    args = parser.parse_args()
    everything = os.sched_getaffinity(0)
    if not args.no_pin and len(everything) > 1:
        os.sched_setaffinity(0, everything - {args.gateway_cpu})
    codes: list[tuple[str, Path | None]] = [("this", None)]
    if args.compare is not None:
        codes.append(("compare", args.compare.resolve()))
    count = args.stacks if args.compare is not None else 1
    rounds: list[dict[str, Any]] = []
    for index in range(count):
        label, directory = codes[index % len(codes)]
        rounds += await one_stack(args, label, directory)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "loadavg_after": os.getloadavg(),
        "medians": {
            label: medians([r for r in rounds if r["code"] == label]) for label, _ in codes
        },
        "rounds": rounds,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tail-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    for label, figures in report["medians"].items():
        print(f"{label}: {figures}")
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    uvloop.run(main())
