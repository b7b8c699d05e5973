"""``/score`` latency while ``GET /audit/verify`` walks a chain of a million decisions.

Starts the dev stack on a database of its own (``scoregate_verify_bench``), seeds it
once with ``--rows`` decisions (default 1,000,000) shaped like the gateway's own (the
template is a record the stack just wrote for a real ``/score``, some 5 kB), and lets
the gateway's sealer seal them all, so a verify has the whole chain to walk. Later
runs reuse the seeded database.

Then, in rounds, ``/score`` runs open loop at a moderate rate (``--rate``, 100/s) on
customers whose features the dev stack's streams keep fresh, once with nothing else going on and
once while an auditor's ``GET /audit/verify`` walks the whole chain. Each round's
percentiles are its own; the figures are the medians over rounds (the machine is
shared, so a stall spoils one round, not the result), and the ratio of the two p99s
says what a verify costs ``/score``. As in ``benchmark.py``, the gateway is pinned to
one core (its hashing thread included) and everything this script starts, and the
PostgreSQL backends of the database, to the others.

    .venv/bin/python loadtests/verify_bench.py             # about 10 minutes with seeding
    .venv/bin/python loadtests/verify_bench.py --quick     # two shorter rounds

Prints the figures and writes ``loadtests/results/verify-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from benchmark import RESULTS, ScoreTraffic, drop_keys
from cpu_meter import TICKS_PER_S, allowed_cpus, pids_serving, pin, process_ticks
from open_loop import run_phase
from traffic import fresh_customers

from scoregate_dev.broker import free_port
from scoregate_dev.stack import DevStack
from writeback import ensure_database, migrate

DATABASE_NAME = "scoregate_verify_bench"
DATABASE = f"postgresql://postgres@127.0.0.1:5432/{DATABASE_NAME}"
CALLER = "verify-bench"
SEED = """
INSERT INTO decisions (decision_id, caller, request_id, model_name, model_version,
                       subject_entity, subject_id, decided_at, committed_at, record)
SELECT id, $6, id::text, 'fraud', '3', 'customer', 'c-' || (1 + n % 1000), at, at,
       replace(replace($1, $2, id::text), $3, id::text)::json
FROM (
    SELECT n, gen_random_uuid() AS id, now() - ($5 - n) * interval '1 millisecond' AS at
    FROM generate_series($4::bigint, $5::bigint) AS n
) AS rows
"""


@dataclass
class Settings:
    """How long and how hard the run is."""

    rows: int
    rate: float
    seconds: float
    rounds: int
    customers: int
    warmup_s: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """Defaults for a full or a quick run, overridden by the given options."""
        return cls(
            rows=args.rows,
            rate=args.rate,
            seconds=args.seconds or (10.0 if args.quick else 20.0),
            rounds=args.rounds or (2 if args.quick else 3),
            customers=500,
            warmup_s=3.0 if args.quick else 5.0,
        )


async def template(stack: DevStack, session: aiohttp.ClientSession) -> tuple[str, str, str]:
    """A record the gateway wrote for a real ``/score``: its text, decision id and
    request id (placeholders for each seeded copy's own)."""
    request_id = f"verify-bench-template-{uuid.uuid4().hex[:8]}"
    body = {
        "model": "fraud",
        "request_id": request_id,
        "entities": {"customer_id": "c-1", "merchant_id": "m-1"},
        "context": {"amount": 42.0, "card_present": False},
    }
    async with session.post(
        f"{stack.url}/score", json=body, headers=stack.headers("scorer")
    ) as response:
        response.raise_for_status()
        decision_id = (await response.json())["decision_id"]
    conn = await asyncpg.connect(DATABASE)
    try:
        text: str = await conn.fetchval(
            "SELECT record::text FROM decisions WHERE decision_id = $1::uuid", decision_id
        )
    finally:
        await conn.close()
    return text, decision_id, request_id


async def seed(stack: DevStack, session: aiohttp.ClientSession, rows: int) -> dict[str, Any]:
    """Seed up to ``rows`` decisions of this script's, then wait until all are sealed."""
    conn = await asyncpg.connect(DATABASE)
    try:
        have = await conn.fetchval("SELECT count(*) FROM decisions WHERE caller = $1", CALLER)
        if have < rows:
            for month in (-1, 0):
                await conn.execute(
                    "SELECT scoregate_ensure_month_partition('decisions',"
                    " (date_trunc('month', now()) + $1 * interval '1 month')::date)",
                    month,
                )
            text, decision_id, request_id = await template(stack, session)
            started = time.perf_counter()
            step = 50_000
            for first in range(have + 1, rows + 1, step):
                last = min(rows, first + step - 1)
                await conn.execute(SEED, text, decision_id, request_id, first, last, CALLER)
                print(
                    f"seeded {last} decisions ({time.perf_counter() - started:.0f} s)", flush=True
                )
            await conn.execute("ANALYZE")
        print("waiting for the gateway's sealer", flush=True)
        started = time.perf_counter()
        while unsealed := await conn.fetchval("SELECT count(*) FROM decision_seal_queue"):
            print(f"  {unsealed} unsealed ({time.perf_counter() - started:.0f} s)", flush=True)
            await asyncio.sleep(5)
        return {
            "seals": await conn.fetchval("SELECT count(*) FROM decision_seals"),
            "record_bytes_avg": await conn.fetchval(
                "SELECT avg(octet_length(record::text))::int FROM"
                " (SELECT record FROM decisions LIMIT 1000) AS sample"
            ),
        }
    finally:
        await conn.close()


@dataclass
class Verify:
    """One ``GET /audit/verify`` in the background, and what it answered."""

    task: asyncio.Task[dict[str, Any]]
    started: float

    @classmethod
    def start(cls, session: aiohttp.ClientSession, stack: DevStack) -> Verify:
        """Send the request; it runs until the walk is done."""

        async def walk() -> dict[str, Any]:
            async with session.get(
                f"{stack.url}/audit/verify",
                headers=stack.headers("auditor"),
                timeout=aiohttp.ClientTimeout(total=3600),
            ) as response:
                response.raise_for_status()
                report: dict[str, Any] = await response.json()
            return report

        return cls(asyncio.create_task(walk()), time.perf_counter())

    async def result(self) -> dict[str, Any]:
        """The report, its duration and the walk's rate."""
        report = await self.task
        seconds = time.perf_counter() - self.started
        return {
            "ok": report["ok"],
            "checked": report["checked"],
            "seconds": round(seconds, 1),
            "seals_per_s": round(report["checked"] / seconds),
        }


async def settle(
    session: aiohttp.ClientSession, stack: DevStack, traffic: ScoreTraffic, limit_s: float = 60.0
) -> None:
    """Wait until the gateway is ready with its breakers closed (a cold start or a bad
    moment of the machine can open one), a trickle of ``/score`` keeping them tried."""
    until = time.perf_counter() + limit_s
    while time.perf_counter() < until:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{stack.url}/health/ready") as response:
                state = await response.json()
            breakers = {
                name: value
                for name, value in state.get("breakers", {}).items()
                if not name.startswith("source:")
            }
            if response.status == 200 and set(breakers.values()) <= {"closed"}:
                return
        await run_phase(
            session,
            f"{stack.url}/score",
            "settle",
            10,
            1.0,
            traffic.body,
            headers=stack.headers("scorer"),
        )
    print("  the gateway did not settle within the limit", flush=True)


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    """What a phase's summary says about latency and errors."""
    keys = ("sent", "ok", "statuses", "error_rate", "p50_ms", "p99_ms", "max_ms")
    return {key: summary[key] for key in keys}


def medians(phases: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median over rounds of each percentile and of the error rate."""
    out: dict[str, float | None] = {}
    for key in ("p50_ms", "p99_ms", "max_ms", "error_rate"):
        values = [p[key] for p in phases if p[key] is not None]
        out[key] = (
            round(statistics.median(values), 4 if key == "error_rate" else 2) if values else None
        )
    return out


async def measure(
    stack: DevStack, session: aiohttp.ClientSession, settings: Settings, others: set[int] | None
) -> dict[str, Any]:
    """Rounds of ``/score`` alone and beside a verify of the whole chain."""
    fresh = fresh_customers(settings.customers)
    url, headers = f"{stack.url}/score", stack.headers("scorer")
    run = uuid.uuid4().hex[:6]

    async def phase(name: str, number: int) -> dict[str, Any]:
        if others is not None:
            # The pool may have opened connections since; each is a new backend.
            pin(pids_serving(DATABASE_NAME), others)
        traffic = ScoreTraffic(f"vb-{run}-{name}{number}-", settings.customers, fresh)
        await settle(session, stack, traffic)
        gateway = stack.gateway_pid
        ticks = process_ticks(gateway) if gateway else None
        backends = {pid: process_ticks(pid) for pid in pids_serving(DATABASE_NAME)}
        started = time.perf_counter()
        result = await run_phase(
            session,
            url,
            name,
            settings.rate,
            settings.seconds,
            traffic.body,
            seed=number,
            headers=headers,
            on_answer=traffic.on_answer,
        )
        shown = figures(result.summary())
        after = process_ticks(gateway) if gateway else None
        if ticks is not None and after is not None:
            # The gateway's share of a core over the phase: /score's work, and the verify's.
            busy_s = (after - ticks) / TICKS_PER_S
            shown["gateway_cpu_share"] = round(busy_s / (time.perf_counter() - started), 3)
        # The database's side: the verify's backend hashes and reads every record.
        spent = 0
        for pid in set(backends) | set(pids_serving(DATABASE_NAME)):
            # A backend the pool opened during the phase spent all its time in it.
            before, now = backends.get(pid, 0), process_ticks(pid)
            if before is not None and now is not None:
                spent += now - before
        shown["postgres_backends_cpu_share"] = round(
            spent / TICKS_PER_S / (time.perf_counter() - started), 3
        )
        return shown

    print(f"warm-up: {await phase('warm-up', 0)}", flush=True)
    rounds = []
    for number in range(1, settings.rounds + 1):
        idle = await phase("idle", number)
        print(f"round {number} /score alone:       {idle}", flush=True)
        verify = Verify.start(session, stack)
        beside = await phase("verify", number)
        beside["verify_still_running_at_end"] = not verify.task.done()
        print(f"round {number} /score beside verify: {beside}", flush=True)
        walked = await verify.result()
        print(f"round {number} verify: {walked}", flush=True)
        rounds.append({"idle": idle, "beside_verify": beside, "verify": walked})
    idle_m = medians([r["idle"] for r in rounds])
    beside_m = medians([r["beside_verify"] for r in rounds])
    return {
        "rounds": rounds,
        "median_idle": idle_m,
        "median_beside_verify": beside_m,
        "p50_ratio": _ratio(beside_m["p50_ms"], idle_m["p50_ms"]),
        "p99_ratio": _ratio(beside_m["p99_ms"], idle_m["p99_ms"]),
        "verify_median_seconds": statistics.median(r["verify"]["seconds"] for r in rounds),
    }


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 3) if top is not None and bottom else None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=100.0, help="/score requests per second")
    parser.add_argument("--seconds", type=float, default=0.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gateway-cpu", type=int, default=0)
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    settings = Settings.from_args(args)

    await ensure_database(DATABASE)
    await migrate(DATABASE)
    prefix = f"vbench-{uuid.uuid4().hex[:6]}"
    os.environ["SCOREGATE_DATABASE_URL"] = DATABASE
    os.environ["SCOREGATE_REDIS_PREFIX"] = prefix
    everything = os.sched_getaffinity(0)
    pinned = len(everything) >= 2 and not args.no_pin
    others = everything - {args.gateway_cpu} if pinned else None
    if others is not None:
        # Children inherit this: the sources, model server and broker share the other cores.
        os.sched_setaffinity(0, others)
    stack = DevStack(
        port=free_port(),
        customers=settings.customers,
        gateway_cpus=str(args.gateway_cpu) if pinned else None,
    )
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        await stack.start()
        report["gateway_cpus"] = allowed_cpus(stack.gateway_pid) if stack.gateway_pid else None
        await stack.seed()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024)) as session:
            report["chain"] = await seed(stack, session, settings.rows)
            print(f"chain: {report['chain']}", flush=True)
            report["settings"] = settings.__dict__
            report["results"] = await measure(stack, session, settings, others)
    finally:
        await stack.stop()
        os.sched_setaffinity(0, everything)
        await drop_keys(prefix)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"verify-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    results = report["results"]
    print(
        json.dumps(
            {
                key: results[key]
                for key in (
                    "median_idle",
                    "median_beside_verify",
                    "p50_ratio",
                    "p99_ratio",
                    "verify_median_seconds",
                )
            },
            indent=2,
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    asyncio.run(main())
