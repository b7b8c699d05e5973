"""Gateway CPU per ``POST /score``, this checkout and others side by side.

Starts the dev stack (broker, sample sources and model, ingest worker and its streams,
which keep the benchmark's customers fresh), then one more gateway for this checkout
and one for each ``--compare`` (a git worktree of other code), each on a database of
its own, all pinned to ``--gateway-cpu`` and everything else on the other cores. In
rounds, each starting with the next variant, each gateway gets phases on customers
whose features are fresh, open loop at ``--rate`` or closed loop over
``--connections`` (with one, no request meets another, so nothing is batched, pipelined
or committed together, and the CPU per request does not fall as latency rises):

- **masked**: the scorer key (no ``pii`` scope), no request id: the answer is masked;
- **pii**: an admin key (sees PII), a new request id per request: the answer is kept
  for retries.

Per phase: the gateway process's CPU milliseconds per answered request (from
``/proc``) and latency percentiles; the figures are medians over rounds. The measured
gateways run without their outbox relay, which does not serve ``/score``. ``--this``
measures a worktree in place of this checkout (when the working tree holds changes
that are not part of what is measured). ``--profile FILE`` also samples the first
variant's gateway with py-spy (``--py-spy``, raw folded stacks, ``--profile-rate`` a
second) through one more masked phase after the rounds. The machine's load average
before and after is reported with the figures.

    git worktree add /tmp/base <commit>
    .venv/bin/python loadtests/score_cpu.py --compare /tmp/base            # ~3 min
    .venv/bin/python loadtests/score_cpu.py --compare /tmp/base --connections 1 --rounds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from benchmark import RESULTS, drop_keys, stop_process
from cpu_meter import CpuMeter, pids_serving, pin
from idempotency_bench import Gateway, start_gateway
from open_loop import PhaseResult, run_phase
from traffic import MERCHANTS, MODEL, fresh_customers

from scoregate_dev.broker import free_port
from scoregate_dev.stack import DevStack

PG = "postgresql://postgres@127.0.0.1:5432"
PHASES = ("masked", "pii")


def variants(args: argparse.Namespace) -> dict[str, Path | None]:
    """Each variant's checkout by name (None: this one)."""
    codes: dict[str, Path | None] = {"this": args.this}
    for i, path in enumerate(args.compare, start=1):
        codes["compare" if i == 1 else f"compare{i}"] = path
    return codes


def body_maker(customers: list[int], request_ids: bool) -> Callable[[random.Random], Any]:
    def body(rng: random.Random) -> dict[str, Any]:
        made: dict[str, Any] = {
            "model": MODEL,
            "entities": {
                "customer_id": f"c-{rng.choice(customers)}",
                "merchant_id": f"m-{rng.randint(1, MERCHANTS)}",
            },
            "context": {
                "amount": round(rng.lognormvariate(3.5, 1.1), 2),
                "card_present": rng.random() < 0.4,
            },
        }
        if request_ids:
            made["request_id"] = uuid.uuid4().hex
        return made

    return body


async def closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    name: str,
    args: argparse.Namespace,
    body: Callable[[random.Random], Any],
    seed: int,
    headers: dict[str, str],
) -> PhaseResult:
    """``--connections`` clients, each sending its next request when its last is answered."""
    result = PhaseResult(name=name, rate=0.0, seconds=args.seconds)
    rng = random.Random(seed)
    send_headers = {"content-type": "application/json", **headers}
    started = time.perf_counter()
    until = started + args.seconds

    async def client() -> None:
        while time.perf_counter() < until:
            sent = time.perf_counter()
            try:
                async with session.post(url, json=body(rng), headers=send_headers) as response:
                    await response.read()
                    result.statuses[response.status] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                result.errors[type(exc).__name__] += 1
                continue
            result.latencies_ms.append((time.perf_counter() - sent) * 1000)

    await asyncio.gather(*(client() for _ in range(args.connections)))
    result.elapsed_s = time.perf_counter() - started
    return result


async def phase(
    session: aiohttp.ClientSession,
    gateway: Gateway,
    name: str,
    args: argparse.Namespace,
    headers: dict[str, str],
    customers: list[int],
    number: int,
    others: set[int] | None,
) -> dict[str, Any]:
    """One phase, open loop or closed, with the gateway's CPU per answered request."""
    if others is not None:
        pin(pids_serving(gateway.database), others)
    meter = CpuMeter(trees={"gateway": gateway.process.pid})
    url = f"{gateway.url}/score"
    body = body_maker(customers, request_ids=name == "pii")
    before = meter.read()
    if args.connections:
        result = await closed_loop(session, url, name, args, body, number, headers)
    else:
        result = await run_phase(
            session, url, name, args.rate, args.seconds, body, number, headers=headers
        )
    after = meter.read()
    summary = result.summary()
    ok = result.statuses.get(200, 0)
    spent = CpuMeter.seconds(before, after, "gateway")
    summary["gateway_cpu_ms_per_request"] = round(spent * 1000 / ok, 3) if ok else None
    return summary


def medians(rounds: list[dict[str, Any]], variant: str, name: str) -> dict[str, Any]:
    mine = [r[name] for r in rounds if r["variant"] == variant]
    out: dict[str, Any] = {"rounds": len(mine)}
    for key in ("gateway_cpu_ms_per_request", "p50_ms", "p99_ms"):
        values = [r[key] for r in mine if r.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    out["per_round_cpu_ms"] = [r["gateway_cpu_ms_per_request"] for r in mine]
    out["not_ok"] = sum(r["sent"] - r["ok"] for r in mine)
    return out


def paired(rounds: list[dict[str, Any]], variant: str, base: str, name: str) -> dict[str, Any]:
    """``variant``'s CPU per request over ``base``'s in the same round: the median ratio.

    A ratio within one round cancels what drifts between rounds (the machine's load);
    only rounds in which both answered every request with 200 count.
    """
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rounds:
        by_round.setdefault(r["round"], {})[r["variant"]] = r[name]
    ratios = [
        pair[variant]["gateway_cpu_ms_per_request"] / pair[base]["gateway_cpu_ms_per_request"]
        for pair in by_round.values()
        if all(
            pair.get(v) and pair[v]["ok"] == pair[v]["sent"] and pair[v]["ok"]
            for v in (variant, base)
        )
    ]
    return {
        "rounds": len(ratios),
        "median_ratio": round(statistics.median(ratios), 3) if ratios else None,
        "ratios": [round(x, 3) for x in ratios],
    }


async def profile(
    session: aiohttp.ClientSession,
    gateway: Gateway,
    args: argparse.Namespace,
    headers: dict[str, str],
    customers: list[int],
) -> None:
    """Sample the gateway with py-spy through one masked phase."""
    spy = await asyncio.create_subprocess_exec(
        args.py_spy,
        "record",
        "--format",
        "raw",
        "--rate",
        str(args.profile_rate),
        "--pid",
        str(gateway.process.pid),
        "--output",
        str(args.profile),
        "--duration",
        str(int(args.seconds) + 1),
    )
    await asyncio.sleep(1)
    result = await run_phase(
        session,
        f"{gateway.url}/score",
        "profile",
        args.rate,
        args.seconds,
        body_maker(customers, request_ids=False),
        headers=headers,
    )
    await spy.wait()
    print(f"profiled phase: {result.summary()['statuses']}", flush=True)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    everything = os.sched_getaffinity(0)
    cpu = args.gateway_cpu if len(everything) >= 2 and not args.no_pin else None
    others = everything - {cpu} if cpu is not None else None
    if others is not None:
        # Children inherit this: the stack's processes share the other cores.
        os.sched_setaffinity(0, others)
    os.environ["SCOREGATE_DATABASE_URL"] = f"{PG}/scoregate_score_cpu_stack"
    redis_prefix = f"score-cpu-{uuid.uuid4().hex[:8]}"
    os.environ["SCOREGATE_REDIS_PREFIX"] = redis_prefix
    os.environ.setdefault("SCOREGATE_PII_KEY", uuid.uuid4().hex)
    stack = DevStack(port=free_port(), customers=args.customers)
    gateways: dict[str, Gateway] = {}
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rate_per_s": None if args.connections else args.rate,
        "connections": args.connections or None,
        "seconds": args.seconds,
        "this": str(args.this or Path.cwd()),
        "compare": [str(path) for path in args.compare],
        "gateway_cpu": cpu,
        "load_average_before": os.getloadavg(),
    }
    customers = fresh_customers(args.customers)
    try:
        await stack.start()
        await stack.seed()
        codes = variants(args)
        for name, code in codes.items():
            log = stack.logs / f"gateway-{name}.log"
            gateways[name] = await start_gateway(
                stack, name, code, cpu, log, relay=False, database_prefix="scoregate_score_cpu"
            )
        keys = {"masked": stack.headers("scorer"), "pii": stack.headers("admin")}
        rounds: list[dict[str, Any]] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
            for gateway in gateways.values():  # warm-up, not counted
                for name in PHASES:
                    await phase(session, gateway, name, args, keys[name], customers, 0, None)
            for number in range(1, args.rounds + 1):
                # Each round starts one variant later, so none always goes first.
                names = list(codes)
                shift = (number - 1) % len(names)
                order = names[shift:] + names[:shift]
                for variant in order:
                    done: dict[str, Any] = {"variant": variant, "round": number}
                    for name in PHASES:
                        done[name] = await phase(
                            session, gateways[variant], name, args, keys[name], customers,
                            number, others,
                        )  # fmt: skip
                    rounds.append(done)
                    print(
                        f"round {number} {variant}: "
                        + ", ".join(
                            f"{name} {done[name]['gateway_cpu_ms_per_request']} ms CPU"
                            f" (p50 {done[name]['p50_ms']} ms)"
                            for name in PHASES
                        ),
                        flush=True,
                    )
            if args.profile is not None:
                await profile(session, gateways["this"], args, keys["masked"], customers)
        report["rounds"] = rounds
        report["medians"] = {
            variant: {name: medians(rounds, variant, name) for name in PHASES} for variant in codes
        }
        report["paired"] = {
            variant: {name: paired(rounds, variant, "this", name) for name in PHASES}
            for variant in codes
            if variant != "this"
        }
        report["load_average_after"] = os.getloadavg()
    finally:
        for gateway in gateways.values():
            await stop_process(gateway.process)
        await stack.stop()
        await drop_keys(redis_prefix)
        os.sched_setaffinity(0, everything)
    return report


def print_report(report: dict[str, Any]) -> None:
    load = (
        f"{report['connections']} closed-loop connection(s)"
        if report["connections"]
        else f"{report['rate_per_s']}/s"
    )
    print(f"\n/score at {load}, medians over rounds")
    print(f"{'variant':8} {'phase':7} {'CPU ms/req':>10} {'p50 ms':>7} {'p99 ms':>7}  per round")
    for variant, phases in report["medians"].items():
        for name, m in phases.items():
            print(
                f"{variant:8} {name:7} {m['gateway_cpu_ms_per_request']!s:>10}"
                f" {m['p50_ms']!s:>7} {m['p99_ms']!s:>7}  {m['per_round_cpu_ms']}"
                + (f"  ({m['not_ok']} not 200)" if m["not_ok"] else "")
            )
    print("\nCPU per request over this checkout's, in the same round (median of the ratios)")
    for variant, phases in report["paired"].items():
        for name, m in phases.items():
            print(f"{variant:8} {name:7} {m['median_ratio']!s:>6}  of {m['rounds']}: {m['ratios']}")
    print(
        "load average before "
        + " ".join(f"{x:.2f}" for x in report["load_average_before"])
        + ", after "
        + " ".join(f"{x:.2f}" for x in report["load_average_after"])
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        required=True,
        help="a checkout of other code (again for more: compare, compare2, ...)",
    )
    parser.add_argument(
        "--this", type=Path, help="a checkout to measure in place of this one (its worktree)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="of each phase")
    parser.add_argument(
        "--connections",
        type=int,
        default=0,
        help="closed loop with this many clients instead of --rate (1: no request ever"
        " meets another, so nothing is batched, pipelined or committed together)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--gateway-cpu", type=int, default=0)
    parser.add_argument("--no-pin", action="store_true", help="leave every process unpinned")
    parser.add_argument("--profile", type=Path, help="py-spy raw output for this checkout")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    args = parser.parse_args()
    args.compare = [path.resolve() for path in args.compare]
    args.this = None if args.this is None else args.this.resolve()
    return args


if __name__ == "__main__":
    arguments = parse_args()
    result = asyncio.run(main(arguments))
    print_report(result)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"score-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"written {path}")
