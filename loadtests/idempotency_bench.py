"""``/score`` with a ``request_id``, side by side with another checkout: what the key costs.

Starts the dev stack (broker, sample sources and model, ingest worker and its streams,
which keep the benchmark's customers fresh), then one more gateway for this checkout
and one for ``--compare`` (a git worktree of other code), each on a database of its
own so that the PostgreSQL backends serving it are its alone. In rounds, alternating
which goes first, each gateway gets two open-loop phases at ``--rate``:

- **new**: every request carries a request id never used before;
- **retry**: the requests of its new phase again, the same bodies under the same ids,
  each once (a client retrying after a lost answer, to the gateway that answered).

Per phase: latency percentiles, the gateway's CPU and its database backends' CPU per
answered request (from ``/proc``), and PostgreSQL transactions per answered request
(``pg_stat_database.xact_commit`` of the gateway's database; each statement outside a
transaction block is one; the sealer's background work adds some). Backends publish
their counts only once idle, and here that took more than the documented 10 s, so
each phase is followed by a pause (``--stats-wait``, 25 s) before they are read.
The measured gateways run without their outbox relay (``--relay`` runs it): it does
not serve ``/score``, and its publishing, the same in both, adds transactions and CPU
per decision that bury the difference. Figures are the medians over rounds. Each
round also checks that every retry got its first answer and that each database holds
one decision per answered new request.

    git worktree add /tmp/base <commit>
    .venv/bin/python loadtests/idempotency_bench.py --compare /tmp/base      # ~8 min
    .venv/bin/python loadtests/idempotency_bench.py --compare /tmp/base --quick

The variants differ only in their code if this checkout is clean: run it from a
worktree of the commit to measure (``PYTHONPATH=<worktree>:<worktree>/sample``) when
the working tree holds changes of others.

The gateways are pinned to ``--gateway-cpu`` (default 0) and everything else this
script starts, and the backends of the two databases, to the other cores. Prints the
figures and writes ``loadtests/results/idempotency-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
from benchmark import RESULTS, fresh_database, stop_process
from cpu_meter import CpuMeter, pids_serving, pin
from open_loop import PhaseResult, run_phase
from traffic import MERCHANTS, MODEL, fresh_customers

from scoregate_dev.broker import free_port
from scoregate_dev.stack import DevStack
from writeback import ensure_database, migrate

PG = "postgresql://postgres@127.0.0.1:5432"
VARIANTS = ("this", "compare")

_decode = msgspec.json.Decoder()


@dataclass
class Gateway:
    """One variant's gateway process, its database and what it answered."""

    name: str
    process: asyncio.subprocess.Process
    url: str
    database: str
    answers: dict[str, str] = field(default_factory=dict)
    """Decision id by request id, from the new phases."""


async def start_gateway(
    stack: DevStack,
    name: str,
    code: Path | None,
    cpu: int | None,
    log: Path,
    relay: bool,
    database_prefix: str = "scoregate_idem_bench",
) -> Gateway:
    """Start ``scoregate serve`` of ``code`` (None: this checkout) on a database of its own
    (``<database_prefix>_<name>``)."""
    database = f"{database_prefix}_{name}"
    url = f"{PG}/{database}"
    await fresh_database(url)
    await ensure_database(url)
    await migrate(url)
    env = {
        **stack.env,
        "SCOREGATE_DATABASE_URL": url,
        "SCOREGATE_RELAY": "true" if relay else "false",
    }
    if code is not None:
        # The checkout's packages come before the ones installed in the environment.
        paths = [str(code), str(code / "sample"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    port = free_port()
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            env=env,
            cwd=code,
            stdout=out,
            stderr=out,
        )
    gateway = Gateway(name, process, f"http://127.0.0.1:{port}", database)
    await wait_ready(gateway, log)
    return gateway


async def wait_ready(gateway: Gateway, log: Path, limit_s: float = 30.0) -> None:
    async with aiohttp.ClientSession() as session:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                while gateway.process.returncode is None:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{gateway.url}/health/ready") as response:
                            if response.status == 200:
                                return
                    await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway {gateway.name} did not become ready; see {log}")


async def transactions(database: str) -> int:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        count: int = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
        )
        return count
    finally:
        await conn.close()


async def measured(
    gateway: Gateway, run: Any, others: set[int] | None, stats_wait_s: float
) -> tuple[PhaseResult, dict[str, Any]]:
    """Run one phase (``run()``), with CPU and transactions per answered request."""
    if others is not None:
        pin(pids_serving(gateway.database), others)
    meter = CpuMeter(trees={"gateway": gateway.process.pid}, databases={"pg": gateway.database})
    xacts_before = await transactions(gateway.database)
    before = meter.read()
    result: PhaseResult = await run()
    after = meter.read()
    await asyncio.sleep(stats_wait_s)
    xacts = await transactions(gateway.database) - xacts_before
    ok = result.statuses.get(200, 0)
    summary = result.summary()
    per = 1000 / ok if ok else 0.0
    summary["gateway_cpu_ms_per_request"] = round(
        CpuMeter.seconds(before, after, "gateway") * per, 3
    )
    summary["pg_cpu_ms_per_request"] = round(CpuMeter.seconds(before, after, "pg") * per, 3)
    summary["pg_transactions_per_request"] = round(xacts / ok, 3) if ok else None
    return result, summary


async def one_round(
    session: aiohttp.ClientSession,
    gateway: Gateway,
    number: int,
    args: argparse.Namespace,
    headers: dict[str, str],
    others: set[int] | None,
) -> dict[str, Any]:
    """The new and the retry phase of one gateway in one round."""
    customers = fresh_customers(args.customers)
    sent: dict[str, dict[str, Any]] = {}
    answered: dict[str, str] = {}

    def new_body(rng: random.Random) -> dict[str, Any]:
        request_id = f"r{number}-{uuid.uuid4().hex}"
        body = {
            "model": MODEL,
            "entities": {
                "customer_id": f"c-{rng.choice(customers)}",
                "merchant_id": f"m-{rng.randint(1, MERCHANTS)}",
            },
            "context": {
                "amount": round(rng.lognormvariate(3.5, 1.1), 2),
                "card_present": rng.random() < 0.4,
            },
            "request_id": request_id,
        }
        sent[request_id] = body
        return body

    def keep(status: int, data: bytes) -> None:
        if status == 200:
            answer = _decode.decode(data)
            answered[answer["request_id"]] = answer["decision_id"]

    url = f"{gateway.url}/score"
    _, new = await measured(
        gateway,
        lambda: run_phase(
            session,
            url,
            "new",
            args.rate,
            args.seconds,
            new_body,
            number,
            headers=headers,
            on_answer=keep,
        ),
        others,
        args.stats_wait,
    )
    gateway.answers.update(answered)
    retried = iter([sent[request_id] for request_id in answered])
    wrong: list[str] = []

    def retry_body(_: random.Random) -> dict[str, Any]:
        return next(retried)

    def check(status: int, data: bytes) -> None:
        answer = _decode.decode(data) if status == 200 else None
        if answer is None or answered.get(answer["request_id"]) != answer["decision_id"]:
            wrong.append(data.decode(errors="replace")[:200])

    _, retry = await measured(
        gateway,
        lambda: run_phase(
            # Half a request's interval more, so that the schedule holds every retry.
            session,
            url,
            "retry",
            args.rate,
            (len(answered) + 0.5) / args.rate,
            retry_body,
            number,
            headers=headers,
            on_answer=check,
        ),
        others,
        args.stats_wait,
    )
    retry["not_the_first_answer"] = len(wrong)
    return {"variant": gateway.name, "round": number, "new": new, "retry": retry}


def medians(rounds: list[dict[str, Any]], variant: str, phase: str) -> dict[str, Any]:
    keys = (
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "gateway_cpu_ms_per_request",
        "pg_cpu_ms_per_request",
        "pg_transactions_per_request",
    )
    mine = [r[phase] for r in rounds if r["variant"] == variant]
    out: dict[str, Any] = {"rounds": len(mine)}
    for key in keys:
        values = [r[key] for r in mine if r.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    out["server_errors"] = sum(
        n for r in mine for status, n in r["statuses"].items() if int(status) >= 500
    )
    out["not_the_first_answer"] = sum(r.get("not_the_first_answer", 0) for r in mine)
    return out


async def decisions(database: str) -> int:
    conn = await asyncpg.connect(f"{PG}/{database}")
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM decisions")
        return count
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    everything = os.sched_getaffinity(0)
    cpu = args.gateway_cpu if len(everything) >= 2 and not args.no_pin else None
    others = everything - {cpu} if cpu is not None else None
    if others is not None:
        # Children inherit this: the stack's processes share the other cores.
        os.sched_setaffinity(0, others)
    os.environ.setdefault("SCOREGATE_DATABASE_URL", f"{PG}/scoregate_idem_bench_stack")
    os.environ.setdefault("SCOREGATE_PII_KEY", uuid.uuid4().hex)
    stack = DevStack(port=free_port(), customers=args.customers)
    gateways: dict[str, Gateway] = {}
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "compare": str(args.compare),
        "gateway_cpu": cpu,
        "relay": args.relay,
    }
    try:
        await stack.start()
        await stack.seed()
        codes = {"this": None, "compare": args.compare}
        for name in VARIANTS:
            log = stack.logs / f"gateway-{name}.log"
            gateways[name] = await start_gateway(stack, name, codes[name], cpu, log, args.relay)
        headers = stack.headers("scorer")
        rounds: list[dict[str, Any]] = []
        connector = aiohttp.TCPConnector(limit=512)
        async with aiohttp.ClientSession(connector=connector) as session:
            for gateway in gateways.values():  # warm-up, not counted
                await run_phase(
                    session,
                    f"{gateway.url}/score",
                    "warm",
                    args.rate,
                    2,
                    lambda rng: _warm_body(rng, args.customers),
                    headers=headers,
                )
            for number in range(1, args.rounds + 1):
                order = VARIANTS if number % 2 else tuple(reversed(VARIANTS))
                for name in order:
                    done = await one_round(session, gateways[name], number, args, headers, others)
                    rounds.append(done)
                    print(
                        f"round {number} {name}: new p50 {done['new']['p50_ms']} ms,"
                        f" gateway {done['new']['gateway_cpu_ms_per_request']} ms CPU,"
                        f" pg {done['new']['pg_transactions_per_request']} xact;"
                        f" retry p50 {done['retry']['p50_ms']} ms,"
                        f" pg {done['retry']['pg_transactions_per_request']} xact",
                        flush=True,
                    )
        report["rounds"] = rounds
        report["medians"] = {
            name: {phase: medians(rounds, name, phase) for phase in ("new", "retry")}
            for name in VARIANTS
        }
        report["integrity"] = {
            name: {
                "answered_new": len(gateway.answers),
                "decisions": await decisions(gateway.database),
            }
            for name, gateway in gateways.items()
        }
    finally:
        for gateway in gateways.values():
            await stop_process(gateway.process)
        await stack.stop()
        os.sched_setaffinity(0, everything)
    return report


def _warm_body(rng: random.Random, customers: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "entities": {
            "customer_id": f"c-{rng.choice(fresh_customers(customers))}",
            "merchant_id": f"m-{rng.randint(1, MERCHANTS)}",
        },
        "context": {"amount": 30.0, "card_present": False},
        "request_id": uuid.uuid4().hex,
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"\n/score with request_id at {report['rate_per_s']}/s (medians over rounds)")
    header = f"{'variant':8} {'phase':6} {'p50 ms':>8} {'p99 ms':>8} {'gw CPU ms':>10}"
    print(header + f" {'pg CPU ms':>10} {'pg xact':>8} {'5xx':>4} {'wrong':>5}")
    for name, phases in report["medians"].items():
        for phase, m in phases.items():
            print(
                f"{name:8} {phase:6} {m['p50_ms']!s:>8} {m['p99_ms']!s:>8}"
                f" {m['gateway_cpu_ms_per_request']!s:>10} {m['pg_cpu_ms_per_request']!s:>10}"
                f" {m['pg_transactions_per_request']!s:>8} {m['server_errors']:>4}"
                f" {m['not_the_first_answer']:>5}"
            )
    for name, counts in report["integrity"].items():
        print(f"{name}: {counts['answered_new']} new answers, {counts['decisions']} decisions")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, required=True, help="a checkout of other code")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="of each new phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--stats-wait",
        type=float,
        default=25.0,
        help="seconds after each phase before PostgreSQL's counts are read",
    )
    parser.add_argument(
        "--relay", action="store_true", help="run the outbox relay in the measured gateways"
    )
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--gateway-cpu", type=int, default=0)
    parser.add_argument("--no-pin", action="store_true", help="leave every process unpinned")
    parser.add_argument("--quick", action="store_true", help="two rounds of 5 s")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 5.0
    args.compare = args.compare.resolve()
    return args


if __name__ == "__main__":
    arguments = parse_args()
    result = asyncio.run(main(arguments))
    print_report(result)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"idempotency-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"written {path}")
