"""The benchmark: ``POST /score`` against a bare echo, side by side, on one pinned core.

One command starts the whole local stack (PostgreSQL and Redis are the local servers;
the broker, the sample sources at their realistic latency, the sample model server and
the gateway are child processes, in a database and Redis key prefix of the run's own)
with the gateway pinned to one core and everything else this script starts on the
other, or measures a running stack (``--url``). Then, in the same run:

1. **Latency per rate.** ``/score`` open loop at rising fixed rates until it
   saturates (latency from the scheduled send time, so no coordinated omission),
   alternating in rounds with the echo baseline (``echo_app.py``: Litestar + msgspec
   on uvicorn with uvloop and httptools, pinned to the gateway's core, the same body)
   at the same rate; percentiles are the medians of the rounds'.
2. **Capacity.** Each server's CPU seconds per request, from ``/proc`` (its process
   and workers, before and after each phase, the outbox drained), so what PostgreSQL,
   Redis, the model server and the load generator spend does not count; the
   capacity ratio is echo CPU per request / ``/score`` CPU per request. Both are also
   run closed loop (N connections, as wrk does) for throughput at saturation. N is 16
   per worker by default: enough to keep one core busy, few enough that requests do
   not queue inside the gateway past its 50 ms online-store read timeout (with many
   more, a saturated gateway trips its own Redis breaker and measures its fallback
   path). The PostgreSQL backends serving the run's database are moved to the other
   cores too; the machine's PostgreSQL and Redis servers themselves are left alone.
   Each round also drives both with ``wrk`` (``wrk_score.lua``: the same N
   connections, the same mix of bodies, each with a request id of its own), pinned
   with ``taskset`` to the load generator's cores, so a C load generator saturates
   them too: requests per second and CPU per request from the same ``/proc`` meter,
   and wrk's own CPU beside them. After the rounds, one more ``/score`` wrk round runs
   with ``py-spy`` sampling the gateway (``benchmark-<time>-score.svg``, a flame
   graph); py-spy pauses the gateway at every sample, so that round's figures are kept
   apart from the medians.
3. **Own overhead.** At a moderate rate, on customers whose features the dev stack's
   ingest worker keeps fresh from its sample streams, ``/score``'s p50 minus the p50s of
   its dependencies' own round trips measured from this host: a Redis read of the same
   fields, a model call with the same body, a PostgreSQL commit of a decision-sized row
   (``probes.py``).
4. **Integrity.** Audit rows = 200 answers, ``decision.made`` events on the topic =
   committed decisions, no duplicate ``ce_id`` (``integrity.py``), over every phase:
   wrk's answers count too (its script keeps each 200 answer's decision id).
5. **Scaling.** The stack again with ``scoregate serve --workers 2`` and nothing
   pinned; steps 1, 2 and 4 for ``/score``.

Prints the figures and writes ``loadtests/results/benchmark-<time>.json``, the
latency chart ``benchmark-<time>.html`` and the flame graph. Without ``wrk`` (``--wrk``,
else on ``PATH``) or ``py-spy`` (``--py-spy``, else on ``PATH`` or in
``/tmp/spyenv/bin``) the step that needs it is skipped, and the run says so.

    .venv/bin/python loadtests/benchmark.py            # full run, about 6-10 minutes
    .venv/bin/python loadtests/benchmark.py --quick    # smoke, about 2 minutes
    .venv/bin/python loadtests/benchmark.py --url http://127.0.0.1:8000 \\
        --keys scorer=sg_...,admin=sg_...              # a running stack (no scaling step)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import msgspec
import redis.asyncio as aioredis
import uvloop
from chart import Series, page
from cpu_meter import CpuMeter, Reading, allowed_cpus, listening_pid, pids_serving, pin
from integrity import audit_counts, committed_decisions, topic_counts, wait_delivered
from open_loop import PhaseResult, run_calls, run_phase
from probes import AuditCommit, ModelCall, ModelShape, RedisRead
from traffic import MERCHANTS, fresh_customers, score_body

from gateway.auth import key_from_secret, parse_dev_keys
from scoregate_dev.broker import free_port, wait_for_port
from scoregate_dev.stack import DEFAULT_DATABASE_URL, DevStack

HERE = Path(__file__).parent
RESULTS = HERE / "results"
DATABASE = "postgresql://postgres@127.0.0.1:5432/scoregate_benchmark"
REDIS = "redis://127.0.0.1:6379/0"
FULL_RATES = "100,200,250,300,400,500,600,800,1000,1200,1500,2000,2500,3000"
QUICK_RATES = "100,300,500,800,1200,1600,2400,3200"
SATURATED_P99_MS = 1000.0
"""A p99 past this (the sample model's request deadline) counts as saturated."""
WRK_SCRIPT = HERE / "wrk_score.lua"
SPY_VENV = Path("/tmp/spyenv/bin/py-spy")
"""Where py-spy is looked for when it is not on ``PATH`` (a scratch venv: the project's
own does not carry it)."""
REQUEST_ID_SLOT = "@request-id@"
"""Stands for the request id in a body template; wrk's script puts the id there."""


class DecisionId(msgspec.Struct):
    """The one field of a score answer the benchmark keeps."""

    decision_id: str


_decision_id = msgspec.json.Decoder(DecisionId).decode


@dataclass
class Settings:
    """How long and how hard each step runs."""

    rates: list[float]
    seconds: float
    warmup_s: float
    closed_s: float
    connections: int
    moderate_rate: float
    overhead_s: float
    customers: int
    rounds: int
    drain_limit_s: float = 60.0
    wrk: str | None = None
    """wrk's path; None: no wrk phases."""
    wrk_threads: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """Defaults for a full or a quick run, overridden by the given options."""
        quick = args.quick
        rates = args.rates or (QUICK_RATES if quick else FULL_RATES)
        return cls(
            rates=[float(r) for r in rates.split(",")],
            seconds=args.seconds or (4.0 if quick else 12.0),
            warmup_s=2.0 if quick else 5.0,
            closed_s=4.0 if quick else 10.0,
            connections=args.connections,
            moderate_rate=args.moderate_rate,
            overhead_s=4.0 if quick else 10.0,
            customers=args.customers or (500 if quick else 2000),
            rounds=args.rounds or (2 if quick else 3),
            wrk=None if args.no_wrk else find_tool(args.wrk, "wrk"),
            wrk_threads=args.wrk_threads,
        )


def find_tool(given: str | None, name: str, fallback: Path | None = None) -> str | None:
    """The path of a tool: the one given, else ``name`` on ``PATH``, else ``fallback``;
    None (and a line saying so) when there is none."""
    found = shutil.which(given or name)
    if found is None and given is None and fallback is not None and fallback.exists():
        found = str(fallback)
    if found is None:
        print(f"{given or name} not found: the steps that need {name} are skipped", flush=True)
    return found


@dataclass
class ScoreTraffic:
    """``/score`` bodies with run-scoped request ids, and the decision ids answered."""

    prefix: str
    customers: int
    only: list[int] | None = None
    collect: bool = True
    """Keep decision ids (the echo's answers have none)."""
    answered: set[str] = field(default_factory=set)
    ok: int = 0
    from_sources: int = 0
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def body(self, rng: random.Random) -> dict[str, Any]:
        """The next request; from ``only`` customers when given."""
        body = score_body(rng, self.customers, f"{self.prefix}{next(self._numbers)}")
        if self.only:
            body["entities"]["customer_id"] = f"c-{rng.choice(self.only)}"
        return body

    def on_answer(self, status: int, data: bytes) -> None:
        """Keep the decision id of every 200 answer."""
        if status == 200 and self.collect:
            self.ok += 1
            self.answered.add(_decision_id(data).decision_id)
            if b'"source":"source:' in data:
                self.from_sources += 1

    def templates(self, rng: random.Random) -> list[tuple[str, str]]:
        """One body per customer of the mix, in random order, each split where its
        request id goes (for wrk, which fills in ids of its own)."""
        customers = list(self.only or range(1, self.customers + 1))
        rng.shuffle(customers)
        split = []
        for customer in customers:
            body = score_body(rng, self.customers, REQUEST_ID_SLOT)
            body["entities"]["customer_id"] = f"c-{customer}"
            head, tail = msgspec.json.encode(body).decode().split(REQUEST_ID_SLOT)
            split.append((head, tail))
        return split

    def wrk_prefix(self) -> str:
        """A request-id prefix for one wrk phase, under the traffic's own prefix."""
        return f"{self.prefix}wrk{next(self._numbers)}-"

    def take(self, answers: WrkAnswers) -> None:
        """Count a wrk phase's answers as if they had come one by one."""
        if self.collect:
            self.ok += answers.statuses.get(200, 0)
            self.answered.update(answers.decisions)
            self.from_sources += answers.from_sources


@dataclass
class WrkAnswers:
    """What ``wrk_score.lua`` wrote when wrk was done."""

    statuses: Counter[int] = field(default_factory=Counter)
    decisions: list[str] = field(default_factory=list)
    from_sources: int = 0
    degraded: int = 0
    requests: int = 0
    duration_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    """Socket errors by kind (connect, read, write, timeout), those that happened."""
    percentiles_ms: dict[str, float | None] = field(default_factory=dict)
    """``p50_ms``, ``p95_ms``, ``p99_ms`` and ``max_ms``, as the phases report them."""

    @classmethod
    def parse(cls, text: str) -> WrkAnswers:
        """Read the script's ``key value`` lines."""
        answers = cls()
        for line in text.splitlines():
            key, *values = line.split()
            if key == "status":
                answers.statuses[int(values[0])] += int(values[1])
            elif key == "decision":
                answers.decisions.append(values[0])
            elif key == "error":
                if int(values[1]):
                    answers.errors[values[0]] += int(values[1])
            elif key in ("from_sources", "degraded", "requests"):
                setattr(answers, key, int(values[0]))
            elif key == "duration_us":
                answers.duration_s = int(values[0]) / 1e6
            elif key.endswith("_us"):
                answers.percentiles_ms[f"{key[:-3]}_ms"] = round(float(values[0]) / 1000, 2)
        return answers


def wrk_requests(templates: Iterable[tuple[str, str]], headers: Mapping[str, str]) -> str:
    """The request file ``wrk_score.lua`` reads: tab-separated header and body lines."""
    lines = [f"header\t{name}\t{value}" for name, value in headers.items()]
    lines += [f"body\t{head}\t{tail}" for head, tail in templates]
    if any("\n" in line or line.count("\t") != 2 for line in lines):
        raise ValueError("a header or body holds a tab or a newline")
    return "\n".join(lines) + "\n"


def cpu_list(cpus: Iterable[int]) -> str:
    """A CPU set as ``taskset -c`` takes it: ``"1"``, ``"0,1"``."""
    return ",".join(str(cpu) for cpu in sorted(cpus))


@dataclass
class Wrk:
    """wrk, the C load generator, run to its end on this process's cores."""

    path: str
    threads: int = 1
    timeout_s: float = 5.0

    def command(
        self, url: str, connections: int, seconds: float, requests: Path, prefix: str, out: Path
    ) -> list[str]:
        """wrk's command line, pinned with ``taskset`` to the cores this process may use."""
        return [
            "taskset",
            "-c",
            cpu_list(os.sched_getaffinity(0)),
            self.path,
            f"-t{min(self.threads, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={self.timeout_s:g}s",
            f"--script={WRK_SCRIPT}",
            url,
            "--",
            str(requests),
            prefix,
            str(out),
        ]

    def run(
        self, url: str, connections: int, seconds: float, requests: str, prefix: str
    ) -> tuple[list[str], WrkAnswers, float]:
        """Run wrk with ``wrk_score.lua`` to its end (blocking): its command, what its
        script wrote, and its CPU seconds."""
        with tempfile.TemporaryDirectory(prefix="scoregate-wrk-") as workdir:
            data, out = Path(workdir, "requests.tsv"), Path(workdir, "answers.txt")
            data.write_text(requests)
            command = self.command(url, connections, seconds, data, prefix, out)
            code, output, cpu_s = run_counted(command)
            if code != 0 or not out.exists():
                raise RuntimeError(f"wrk exited {code}: {output[-2000:]}")
            return command, WrkAnswers.parse(out.read_text()), cpu_s


def run_counted(command: list[str]) -> tuple[int, str, float]:
    """Run a command to its end: its exit code, output, and CPU seconds (its own
    resource usage, from ``wait4``, so no other child's counts)."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, output, usage.ru_utime + usage.ru_stime


@dataclass
class FlameGraph:
    """py-spy, and the file one saturation round's flame graph of the gateway goes to."""

    py_spy: str
    out: Path
    rate: int = 200

    async def start(self, pid: int, seconds: int) -> asyncio.subprocess.Process:
        """Start sampling ``pid`` (and its children, the workers) for ``seconds``."""
        return await asyncio.create_subprocess_exec(
            self.py_spy,
            "record",
            "--format",
            "flamegraph",
            "-o",
            str(self.out),
            "--pid",
            str(pid),
            "--subprocesses",
            "--duration",
            str(seconds),
            "--rate",
            str(self.rate),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )


@dataclass
class Target:
    """An endpoint under load and the process tree charged with its CPU."""

    name: str
    url: str
    group: str
    headers: dict[str, str]
    traffic: ScoreTraffic
    drain: Callable[[], Awaitable[object]] | None = None
    """Waits until work the requests left behind (outbox events) is done; its CPU
    counts against the phase."""
    recover: Callable[[], Awaitable[object]] | None = None
    """Brings the server back to normal after a phase (breakers closed); unmeasured."""


@dataclass
class Window:
    """What a phase started from: CPU reading, time, and the traffic's counters."""

    reading: Reading
    started: float
    ok: int
    from_sources: int


class Bench:
    """One stack under load: runs phases and keeps their figures."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        meter: CpuMeter,
        backends: tuple[str, set[int]] | None = None,
        wrk: Wrk | None = None,
    ) -> None:
        self.session = session
        self.meter = meter
        self.backends = backends
        """A database whose PostgreSQL backends are kept on the given cores."""
        self.wrk = wrk

    def _open(self, target: Target) -> Window:
        if self.backends is not None:
            # The pool may have opened connections since; each is a new backend.
            pin(pids_serving(self.backends[0]), self.backends[1])
        traffic = target.traffic
        return Window(self.meter.read(), time.perf_counter(), traffic.ok, traffic.from_sources)

    async def rate(self, target: Target, rate: float, seconds: float) -> dict[str, Any]:
        """Open loop at ``rate``; latency, throughput and CPU per request."""
        window = self._open(target)
        result = await run_phase(
            self.session,
            target.url,
            target.name,
            rate,
            seconds,
            target.traffic.body,
            seed=int(rate),
            headers=target.headers,
            on_answer=target.traffic.on_answer,
        )
        return await self._close(target, result, window)

    async def closed(self, target: Target, connections: int, seconds: float) -> dict[str, Any]:
        """``connections`` requests in flight at all times, each sent when one returns."""
        result = PhaseResult(name=f"{target.name} closed loop", rate=0, seconds=seconds)
        rng = random.Random(connections)
        encode = msgspec.json.Encoder().encode
        headers = {"content-type": "application/json", **target.headers}
        window = self._open(target)
        until = window.started + seconds

        async def connection() -> None:
            while time.perf_counter() < until:
                sent = time.perf_counter()
                try:
                    async with self.session.post(
                        target.url, data=encode(target.traffic.body(rng)), headers=headers
                    ) as response:
                        data = await response.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                result.statuses[response.status] += 1
                result.latencies_ms.append((time.perf_counter() - sent) * 1000)
                target.traffic.on_answer(response.status, data)

        await asyncio.gather(*(connection() for _ in range(connections)))
        result.elapsed_s = time.perf_counter() - window.started
        figures = await self._close(target, result, window)
        figures["connections"] = connections
        return figures

    async def wrk_closed(self, target: Target, connections: int, seconds: float) -> dict[str, Any]:
        """``connections`` requests in flight at all times, sent by wrk; the figures of
        ``closed`` and wrk's own CPU (``generator``)."""
        wrk = self.wrk
        if wrk is None:
            raise RuntimeError("no wrk to run")
        templates = target.traffic.templates(random.Random(connections))
        headers = {"content-type": "application/json", **target.headers}
        requests, prefix = wrk_requests(templates, headers), target.traffic.wrk_prefix()
        window = self._open(target)
        command, answers, wrk_cpu_s = await asyncio.to_thread(
            wrk.run, target.url, connections, seconds, requests, prefix
        )
        target.traffic.take(answers)
        result = PhaseResult(name=f"{target.name} wrk", rate=0, seconds=seconds)
        result.statuses.update(answers.statuses)
        result.errors.update(answers.errors)
        result.degraded = answers.degraded
        result.elapsed_s = answers.duration_s
        figures = await self._close(target, result, window, answers.percentiles_ms)
        wall_s = figures["elapsed_s"] or seconds
        generator = {"cpu_s": round(wrk_cpu_s, 3), "core_share": round(wrk_cpu_s / wall_s, 3)}
        figures["cpu"]["processes"]["wrk"] = generator
        # wrk is not among the meter's groups; its share was counted as unattributed.
        unattributed = figures["cpu"]["unattributed_core_share"] - generator["core_share"]
        figures["cpu"]["unattributed_core_share"] = round(unattributed, 3)
        figures["connections"] = connections
        figures["generator"] = {"command": " ".join(command[:8]), **generator}
        return figures

    async def _close(
        self,
        target: Target,
        result: PhaseResult,
        window: Window,
        percentiles: Mapping[str, float | None] | None = None,
    ) -> dict[str, Any]:
        """Figures of a finished phase: core shares over the load itself, the server's
        CPU per request once what the load left behind is drained; ``percentiles`` in
        place of the result's own (a load generator that keeps only those)."""
        loaded, load_s = self.meter.read(), time.perf_counter() - window.started
        if target.drain is not None:
            await target.drain()
        drained = self.meter.read()
        summary = result.summary()
        summary.update(percentiles or {})
        if target.traffic.collect:
            ok = target.traffic.ok - window.ok
            fetched = target.traffic.from_sources - window.from_sources
            summary["source_fetch_share"] = round(fetched / ok, 4) if ok else None
        answered = sum(result.statuses.values())
        cpu_s = CpuMeter.seconds(window.reading, drained, target.group)
        summary["server_cpu_ms_per_request"] = (
            round(cpu_s / answered * 1000, 4) if answered else None
        )
        summary["cpu"] = self.meter.report(window.reading, loaded, load_s)
        summary["saturated"] = _saturated(summary)
        if target.recover is not None:
            await target.recover()
        return summary


def _saturated(summary: dict[str, Any]) -> bool:
    achieved = summary["achieved_per_s"] or 0
    return bool(
        (summary["rate_per_s"] and achieved < 0.9 * summary["rate_per_s"])
        or (summary["error_rate"] or 0) > 0.01
        or (summary["p99_ms"] or 0) > SATURATED_P99_MS
    )


async def sweep(
    bench: Bench, score: Target, echo: Target | None, settings: Settings
) -> list[dict[str, Any]]:
    """Rising rates until ``/score`` saturates. At each rate ``/score`` and the echo
    alternate for some rounds, each round a share of the rate's seconds; a rate's
    percentiles are the medians of its rounds' (a stall of the machine spoils one
    round's tail, not the rate's), its throughput and CPU per request the totals'."""
    rows = []
    seconds = settings.seconds / settings.rounds
    for rate in settings.rates:
        parts: dict[str, list[dict[str, Any]]] = {"score": [], "echo": []}
        for _ in range(settings.rounds):
            parts["score"].append(await bench.rate(score, rate, seconds))
            if echo is not None:
                parts["echo"].append(await bench.rate(echo, rate, seconds))
        row: dict[str, Any] = {"rate_per_s": rate, "score": combine(parts["score"])}
        if echo is not None:
            row["echo"] = combine(parts["echo"])
            row["capacity_ratio"] = _ratio(row["echo"], row["score"])
        rows.append(row)
        _print_rate(row)
        if row["score"]["saturated"]:
            break
    return rows


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure set from rounds at the same rate: counts and CPU summed, latency
    percentiles the medians of the rounds', core shares the means; saturated if any
    round was."""

    def total(key: str) -> int:
        return sum(p[key] for p in parts)

    def median(key: str) -> float | None:
        values = [p[key] for p in parts if p[key] is not None]
        return round(statistics.median(values), 2) if values else None

    sent, ok = total("sent"), total("ok")
    elapsed = sum(p["elapsed_s"] for p in parts)
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for p in parts:
        statuses.update(p["statuses"])
        errors.update(p["client_errors"])
    answered = sum(statuses.values())
    cpu_ms = sum((p["server_cpu_ms_per_request"] or 0) * sum(p["statuses"].values()) for p in parts)
    combined: dict[str, Any] = {
        "rate_per_s": parts[0]["rate_per_s"],
        "seconds": sum(p["seconds"] for p in parts),
        "rounds": len(parts),
        "sent": sent,
        "ok": ok,
        "statuses": dict(statuses),
        "client_errors": dict(errors),
        "error_rate": round((sent - ok) / sent, 5) if sent else None,
        "achieved_per_s": round(ok / elapsed, 1) if elapsed else None,
        "p50_ms": median("p50_ms"),
        "p95_ms": median("p95_ms"),
        "p99_ms": median("p99_ms"),
        "max_ms": max((p["max_ms"] for p in parts if p["max_ms"] is not None), default=None),
        "server_cpu_ms_per_request": round(cpu_ms / answered, 4) if answered else None,
        "saturated": any(p["saturated"] for p in parts),
        "cpu": _mean_cpu([p["cpu"] for p in parts]),
        "per_round": parts,
    }
    if "source_fetch_share" in parts[0]:
        fetched = sum((p["source_fetch_share"] or 0) * p["ok"] for p in parts)
        combined["source_fetch_share"] = round(fetched / ok, 4) if ok else None
    return combined


def _mean_cpu(reports: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.fmean(present), 3) if present else None

    processes = {
        name: {
            "cpu_s": round(sum(r["processes"][name]["cpu_s"] for r in reports), 3),
            "core_share": mean([r["processes"][name]["core_share"] for r in reports]),
        }
        for name in reports[0]["processes"]
    }
    return {
        "processes": processes,
        "cores_busy": {
            c: mean([r["cores_busy"][c] for r in reports]) for c in reports[0]["cores_busy"]
        },
        "unattributed_core_share": mean([r["unattributed_core_share"] for r in reports]),
    }


def _ratio(echo: dict[str, Any], score: dict[str, Any]) -> float | None:
    """Echo CPU per request over ``/score`` CPU per request: ``/score``'s share of the
    echo's capacity on one core."""
    e, s = echo["server_cpu_ms_per_request"], score["server_cpu_ms_per_request"]
    return round(e / s, 3) if e and s else None


def _print_rate(row: dict[str, Any]) -> None:
    def line(name: str, f: dict[str, Any]) -> str:
        shares = f["cpu"]["processes"]
        gen = shares.get("load generator", {}).get("core_share")
        return (
            f"  {name:<7} {f['achieved_per_s'] or 0:>7.1f}/s  p50 {f['p50_ms']:>7} p95"
            f" {f['p95_ms']:>7} p99 {f['p99_ms']:>8} ms  errors {f['error_rate']:<7}"
            f" cpu {f['server_cpu_ms_per_request']} ms/req  generator {gen} core"
            + (f"  from sources {f['source_fetch_share']}" if "source_fetch_share" in f else "")
            + ("  SATURATED" if f["saturated"] else "")
        )

    print(f"rate {row['rate_per_s']:g}/s", flush=True)
    print(line("/score", row["score"]), flush=True)
    if "echo" in row:
        print(line("echo", row["echo"]) + f"  ratio {row['capacity_ratio']}", flush=True)


async def overhead(
    bench: Bench, score: Target, stack: StackInfo, settings: Settings
) -> dict[str, Any]:
    """``/score`` p50 on fresh features at a moderate rate, minus its dependencies' p50s.

    Each round runs ``/score`` with the probes beside it at a fifth of its rate (the
    dependencies' round trips under the gateway's load, seen from the load
    generator's core), then the probes alone at ``/score``'s rate (their own round
    trips). The own overhead is ``/score``'s p50 minus the probes' own p50s; the same
    against the probes under load is kept too. Medians over rounds, so a noisy moment
    spoils one round, not the figure.
    """
    fresh = fresh_customers(settings.customers)
    rate, seconds = settings.moderate_rate, settings.overhead_s
    rng = random.Random(3)
    ids = [
        {"customer": f"c-{rng.choice(fresh)}", "merchant": f"m-{rng.randint(1, MERCHANTS)}"}
        for _ in range(int(rate * seconds) + 1)
    ]
    redis = RedisRead(stack.redis_url, stack.redis_prefix, stack.shape, ids.__getitem__)
    model = ModelCall(stack.shape)
    commit = await AuditCommit.open(stack.database_url, await _record_text(stack))
    probes = {"redis_read": redis, "model_call": model, "pg_commit": commit}
    rounds = []
    try:
        for number in range(settings.rounds):
            traffic = ScoreTraffic(f"{score.traffic.prefix}o{number}-", settings.customers, fresh)
            measured, *beside = await asyncio.gather(
                bench.rate(dataclasses.replace(score, traffic=traffic), rate, seconds),
                *(run_calls(name, rate / 5, seconds, call) for name, call in probes.items()),
            )
            score.traffic.answered |= traffic.answered
            score.traffic.ok += traffic.ok
            alone = [await run_calls(name, rate, seconds, call) for name, call in probes.items()]
            rounds.append(_overhead_round(measured, alone, beside))
            _print_overhead(rate, rounds[-1])
    finally:
        await redis.close()
        await model.close()
        await commit.close()
    return {
        "rate_per_s": rate,
        "probe_rate_beside_score_per_s": rate / 5,
        "rounds": rounds,
        "median": _median_overhead(rounds),
    }


def _overhead_round(
    measured: dict[str, Any], alone: list[PhaseResult], beside: list[PhaseResult]
) -> dict[str, Any]:
    def minus(probes: dict[str, dict[str, Any]]) -> float | None:
        p50s = [probe["p50_ms"] for probe in probes.values()]
        return None if None in p50s else round(measured["p50_ms"] - sum(p50s), 2)

    own = {p.name: p.summary() for p in alone}
    loaded = {p.name: p.summary() for p in beside}
    return {
        "score": measured,
        "probes": own,
        "probes_beside_score": loaded,
        "own_overhead_ms": minus(own),
        "own_overhead_vs_probes_under_load_ms": minus(loaded),
    }


def _median_overhead(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 2) if present else None

    medians = {"score_p50_ms": median([r["score"]["p50_ms"] for r in rounds])}
    for name in ("redis_read", "model_call", "pg_commit"):
        medians[f"{name}_p50_ms"] = median([r["probes"][name]["p50_ms"] for r in rounds])
    for name in ("redis_read", "model_call", "pg_commit"):
        medians[f"{name}_under_load_p50_ms"] = median(
            [r["probes_beside_score"][name]["p50_ms"] for r in rounds]
        )
    for key in ("own_overhead_ms", "own_overhead_vs_probes_under_load_ms"):
        medians[key] = median([r[key] for r in rounds])
    return medians


async def capacity(
    bench: Bench,
    score: Target,
    echo: Target | None,
    settings: Settings,
    flame: tuple[FlameGraph, int] | None = None,
) -> dict[str, Any]:
    """Closed loop at saturation, ``/score`` and the echo alternating, for some rounds,
    from this process and (with wrk) from wrk; medians of each server's CPU per request
    and throughput, and of the ratio. With ``flame`` (py-spy and the gateway's pid), one
    more ``/score`` round under py-spy, apart from the medians."""
    rounds = []
    for _ in range(settings.rounds):
        pair: dict[str, Any] = {
            "score": await bench.closed(score, settings.connections, settings.closed_s)
        }
        if echo is not None:
            pair["echo"] = await bench.closed(echo, settings.connections, settings.closed_s)
            pair["capacity_ratio"] = _ratio(pair["echo"], pair["score"])
        if bench.wrk is not None:
            pair["wrk_score"] = await bench.wrk_closed(
                score, settings.connections, settings.closed_s
            )
            if echo is not None:
                pair["wrk_echo"] = await bench.wrk_closed(
                    echo, settings.connections, settings.closed_s
                )
                pair["wrk_capacity_ratio"] = _ratio(pair["wrk_echo"], pair["wrk_score"])
        rounds.append(pair)
        _print_closed(pair)
    results: dict[str, Any] = {
        "connections": settings.connections,
        "rounds": rounds,
        "median": closed_medians(rounds),
    }
    if flame is not None:
        results["profiled_round"] = await profiled_round(bench, score, settings, *flame)
    return results


def closed_medians(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per load generator and server: the medians over rounds of requests per second
    and CPU per request, of the capacity ratio, and of wrk's own core share."""

    def median(values: Iterable[float | None], digits: int = 4) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), digits) if present else None

    def of(key: str, field_: str) -> float | None:
        return median(r[key][field_] for r in rounds if key in r)

    medians: dict[str, float | None] = {}
    wrk_rounds = [r[k] for r in rounds for k in ("wrk_score", "wrk_echo") if k in r]
    for generator in ("", "wrk_"):
        if not any(f"{generator}score" in r for r in rounds):
            continue
        for server in ("score", "echo"):
            key = f"{generator}{server}"
            medians[f"{key}_per_s"] = of(key, "achieved_per_s")
            medians[f"{key}_cpu_ms_per_request"] = of(key, "server_cpu_ms_per_request")
        ratios = (r.get(f"{generator}capacity_ratio") for r in rounds)
        medians[f"{generator}capacity_ratio"] = median(ratios, 3)
    if wrk_rounds:
        shares = (figures["generator"]["core_share"] for figures in wrk_rounds)
        medians["wrk_generator_core_share"] = median(shares, 3)
    return medians


async def profiled_round(
    bench: Bench, score: Target, settings: Settings, flame: FlameGraph, pid: int
) -> dict[str, Any]:
    """One more ``/score`` saturation round (by wrk when there is one) with py-spy
    sampling the gateway for all but its last second: the flame graph. py-spy stops
    the gateway at every sample, so the round's figures say what profiling cost, not
    what ``/score`` does."""
    seconds = max(2, round(settings.closed_s))
    print(f"profiled round: py-spy on the gateway (pid {pid}) for {seconds - 1} s", flush=True)
    recorder = await flame.start(pid, seconds - 1)
    try:
        if bench.wrk is not None:
            figures = await bench.wrk_closed(score, settings.connections, seconds)
        else:
            figures = await bench.closed(score, settings.connections, seconds)
    finally:
        output, _ = await recorder.communicate()
    made = recorder.returncode == 0 and flame.out.exists()
    text = output.decode(errors="replace").strip()
    print(f"  flame graph {flame.out if made else 'not written'}: {text[-300:]}", flush=True)
    return {
        "flame_graph": str(flame.out) if made else None,
        "py_spy": {"rate_per_s": flame.rate, "exit": recorder.returncode, "output": text[-2000:]},
        "score": figures,
    }


async def _record_text(stack: StackInfo) -> str:
    conn = await asyncpg.connect(stack.database_url)
    try:
        text: str | None = await conn.fetchval(
            "SELECT record::text FROM decisions WHERE caller = $1"
            " ORDER BY committed_at DESC LIMIT 1",
            stack.caller,
        )
    finally:
        await conn.close()
    return text or json.dumps({"padding": "x" * 6000})


async def integrity(
    stack: StackInfo, traffic: ScoreTraffic, drain_limit_s: float
) -> dict[str, Any]:
    """Audit rows, events and duplicates for every decision of this stack's run."""
    delivered = await wait_delivered(stack.database_url, drain_limit_s)
    committed = await committed_decisions(stack.database_url, stack.caller, traffic.prefix)
    counts = await audit_counts(stack.database_url, traffic.answered)
    events = await topic_counts(stack.kafka_bootstrap, stack.topic, committed)
    missing = len(traffic.answered - set(committed))
    report: dict[str, Any] = {
        "answers_200": traffic.ok,
        "distinct_decision_ids_answered": len(traffic.answered),
        "audit_rows": len(committed),
        "answered_without_audit_row": missing,
        **counts,
        "outbox": delivered,
        **events,
        "lost_events": len(committed) - events["decisions_with_event"],
    }
    report["ok"] = (
        missing == 0
        and report["audit_rows"] >= report["answers_200"]
        and events["duplicate_ce_id"] == 0
        and report["lost_events"] == 0
    )
    return report


@dataclass
class StackInfo:
    """Where a stack's parts are, whoever started it."""

    url: str
    headers: dict[str, str]
    caller: str
    database_url: str
    redis_url: str
    redis_prefix: str
    kafka_bootstrap: str
    topic: str
    gateway_pid: int | None
    shape: ModelShape
    others: dict[str, int | None]
    backend_cpus: set[int] | None = None
    """Cores the run's PostgreSQL backends are pinned to (with a pinned gateway)."""

    @property
    def database(self) -> str:
        """The database's name."""
        return urlsplit(self.database_url).path.lstrip("/")


async def stack_info(
    session: aiohttp.ClientSession,
    url: str,
    scorer_key: str,
    env: dict[str, str],
    gateway_pid: int | None,
    others: dict[str, int | None],
) -> StackInfo:
    """Describe a stack from its environment and ``GET /registry``."""
    headers = {"Authorization": f"Bearer {scorer_key}"}
    async with session.get(f"{url}/registry", headers=headers) as response:
        response.raise_for_status()
        registry = await response.json()
    shape = ModelShape.from_registry(registry, "fraud")
    model_port = urlsplit(shape.endpoint).port
    others = {"model server": listening_pid(model_port) if model_port else None, **others}
    return StackInfo(
        url=url,
        headers=headers,
        caller=key_from_secret(scorer_key, ["scorer"]).key_id,
        database_url=env.get("SCOREGATE_DATABASE_URL", DATABASE),
        redis_url=env.get("SCOREGATE_REDIS_URL", REDIS),
        redis_prefix=env.get("SCOREGATE_REDIS_PREFIX", "sg"),
        kafka_bootstrap=env.get("SCOREGATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        topic=env.get("SCOREGATE_TOPIC", "decision-outcomes"),
        gateway_pid=gateway_pid,
        shape=shape,
        others=others,
    )


def meter_for(stack: StackInfo, echo_pid: int | None) -> CpuMeter:
    """CPU groups: the gateway, the echo, each co-located service, this process."""
    return CpuMeter(
        trees={"gateway": stack.gateway_pid, "echo": echo_pid, **stack.others},
        named={"postgres (machine-wide)": "postgres", "redis (machine-wide)": "redis-server"},
        single={"load generator": os.getpid()},
        databases={"postgres (this run's database)": stack.database},
    )


async def recover(
    session: aiohttp.ClientSession, stack: StackInfo, score: Target, limit_s: float
) -> None:
    """Wait until the gateway is ready with every breaker closed, so one phase's tripped
    breakers do not spill into the next. An open breaker only tries again when a call
    comes after its reset timeout, so a trickle of requests keeps coming meanwhile."""
    until = time.perf_counter() + limit_s
    while time.perf_counter() < until:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{stack.url}/health/ready") as response:
                state = await response.json()
                # A source breaker may stay open for want of calls (its features fresh).
                breakers = {
                    name: value
                    for name, value in state["breakers"].items()
                    if not name.startswith("source:")
                }
                if response.status == 200 and set(breakers.values()) <= {"closed"}:
                    return
        await run_phase(
            session,
            score.url,
            "recovery",
            10,
            1.0,
            score.traffic.body,
            headers=score.headers,
            on_answer=score.traffic.on_answer,
        )
    print("  the gateway did not recover within the limit", flush=True)


async def measure_stack(
    session: aiohttp.ClientSession,
    stack: StackInfo,
    echo: tuple[str, int] | None,
    settings: Settings,
    run: str,
    results: dict[str, Any],
    flame: FlameGraph | None = None,
) -> None:
    """Warm up, sweep, closed loop, overhead (with the echo), then integrity, for one
    stack; each step's figures go into ``results`` as soon as they exist. With
    ``flame``, the closed-loop step ends with a profiled round."""
    bench, score = bench_for(session, stack, echo[1] if echo else None, settings, run)
    traffic = score.traffic
    baseline = None
    if echo is not None:
        echo_traffic = ScoreTraffic(f"echo-{run}-", settings.customers, collect=False)
        baseline = Target("echo", echo[0], "echo", {}, echo_traffic)
    try:
        print(f"warm-up {settings.warmup_s:g} s", flush=True)
        await bench.rate(score, settings.moderate_rate, settings.warmup_s)
        if baseline is not None:
            await bench.rate(baseline, settings.moderate_rate, settings.warmup_s)
        results["sweep"] = await sweep(bench, score, baseline, settings)
        profile = (flame, stack.gateway_pid) if flame and stack.gateway_pid else None
        results["closed_loop"] = await capacity(bench, score, baseline, settings, profile)
        if baseline is not None:
            results["overhead"] = await overhead(bench, score, stack, settings)
    finally:
        results["integrity"] = await integrity(stack, traffic, settings.drain_limit_s)
        print("integrity: " + json.dumps(results["integrity"]), flush=True)


def bench_for(
    session: aiohttp.ClientSession,
    stack: StackInfo,
    echo_pid: int | None,
    settings: Settings,
    run: str,
) -> tuple[Bench, Target]:
    """A bench on ``stack`` (the echo's CPU metered too, when given) and its ``/score``
    target, whose traffic's request ids start ``bench-<run>-``."""
    backends = (stack.database, stack.backend_cpus) if stack.backend_cpus else None
    wrk = Wrk(settings.wrk, settings.wrk_threads) if settings.wrk else None
    bench = Bench(session, meter_for(stack, echo_pid), backends, wrk)
    traffic = ScoreTraffic(f"bench-{run}-", settings.customers)
    score = Target("/score", f"{stack.url}/score", "gateway", stack.headers, traffic)
    score.drain = lambda: wait_delivered(stack.database_url, settings.drain_limit_s)
    score.recover = lambda: recover(session, stack, score, settings.drain_limit_s)
    return bench, score


def _print_closed(closed: dict[str, Any]) -> None:
    for name in ("score", "echo", "wrk_score", "wrk_echo"):
        if name in closed:
            f = closed[name]
            generator = f.get("generator", {}).get("core_share")
            print(
                f"closed loop {name:<9} {f['achieved_per_s']}/s with {f['connections']}"
                f" connections, p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms,"
                f" errors {f['error_rate']}, cpu {f['server_cpu_ms_per_request']} ms/req"
                + (f", wrk {generator} core" if generator is not None else ""),
                flush=True,
            )
    for key in ("capacity_ratio", "wrk_capacity_ratio"):
        if key in closed:
            print(f"  {key.replace('_', ' ')}: {closed[key]}", flush=True)


def _print_overhead(rate: float, result: dict[str, Any]) -> None:
    def listed(probes: dict[str, dict[str, Any]]) -> str:
        return ", ".join(f"{k} {v['p50_ms']}" for k, v in probes.items())

    print(
        f"own overhead at {rate:g}/s: /score p50 {result['score']['p50_ms']} ms"
        f" - probes alone ({listed(result['probes'])}) = {result['own_overhead_ms']} ms;"
        f" - probes beside /score ({listed(result['probes_beside_score'])})"
        f" = {result['own_overhead_vs_probes_under_load_ms']} ms",
        flush=True,
    )


async def start_echo(cpus: str | None) -> tuple[asyncio.subprocess.Process, str]:
    """The echo baseline on a free port, pinned to ``cpus`` when given."""
    port = free_port()
    prefix = ["taskset", "-c", cpus] if cpus else []
    process = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(HERE),
        "echo_app:app",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--port",
        str(port),
    )
    await wait_for_port("127.0.0.1", port)
    return process, f"http://127.0.0.1:{port}/echo"


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """Terminate a child and wait for it."""
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def fresh_database(url: str) -> None:
    """Drop the benchmark's database so each run counts from zero (DevStack migrates it)."""
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def dev_stack(
    session: aiohttp.ClientSession, customers: int, workers: int, gateway_cpus: str | None
) -> AsyncIterator[tuple[DevStack, StackInfo]]:
    """The dev stack started, seeded and described; stopped on the way out."""
    stack = DevStack(
        port=free_port(), customers=customers, workers=workers, gateway_cpus=gateway_cpus
    )
    print(f"starting the stack: {workers} worker(s), gateway cpus {gateway_cpus or 'any'}")
    try:
        await stack.start()
        seeded = await stack.seed()
        print(f"seeded {seeded} entities; logs in {stack.logs}", flush=True)
        broker = stack.env["SCOREGATE_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1]
        others = {
            "sources": stack.pids.get("sources"),
            "ingest": stack.pids.get("ingest"),
            "broker": listening_pid(int(broker)),
        }
        info = await stack_info(
            session, stack.url, stack.keys["scorer"], stack.env, stack.gateway_pid, others
        )
        if gateway_cpus is not None:
            # PostgreSQL and Redis are the machine's own servers and stay where they are;
            # only the backends serving the run's database join the other cores.
            info.backend_cpus = os.sched_getaffinity(0)
        yield stack, info
    finally:
        await stack.stop()


async def run_dev_stack(
    session: aiohttp.ClientSession,
    settings: Settings,
    run: str,
    workers: int,
    gateway_cpus: str | None,
    echo: tuple[str, int] | None,
    flame: FlameGraph | None = None,
) -> dict[str, Any]:
    """Start the stack, seed it, measure it, stop it; a failure is kept in the results."""
    results: dict[str, Any] = {"workers": workers}
    try:
        async with dev_stack(session, settings.customers, workers, gateway_cpus) as (stack, info):
            results["gateway_cpus"] = allowed_cpus(stack.gateway_pid) if stack.gateway_pid else None
            results["logs"] = str(stack.logs)
            run_id = f"{run}w{workers}"
            await measure_stack(session, info, echo, settings, run_id, results, flame)
    except Exception:  # keep what was measured and say what broke
        results["error"] = traceback.format_exc()
        print(results["error"], file=sys.stderr, flush=True)
    return results


async def own_environment(database_url: str, redis_prefix: str) -> None:
    """Point the stack to be started at a fresh database and a key prefix of its own."""
    os.environ["SCOREGATE_DATABASE_URL"] = database_url
    os.environ["SCOREGATE_REDIS_PREFIX"] = redis_prefix
    os.environ.setdefault("SCOREGATE_PII_KEY", uuid.uuid4().hex)
    await fresh_database(database_url)


def pin_apart(gateway_cpu: int, no_pin: bool) -> str | None:
    """Move this process, and so every child it starts from now on, off the gateway's
    core; the gateway's CPU list for ``taskset``, or None when nothing is pinned (asked
    not to, or a single core). The caller restores the affinity it had."""
    everything = os.sched_getaffinity(0)
    if no_pin or len(everything) < 2:
        return None
    os.sched_setaffinity(0, everything - {gateway_cpu})
    return str(gateway_cpu)


async def own_stack(
    args: argparse.Namespace, settings: Settings, run: str, flame: FlameGraph | None
) -> dict[str, Any]:
    """Both stacks (one pinned worker, then two workers), the echo beside the first."""
    await own_environment(args.database_url or DATABASE, f"bench-{run}")
    everything = os.sched_getaffinity(0)
    # Children inherit this: the sources, model server and broker share the other cores.
    gateway_cpu = pin_apart(args.gateway_cpu, args.no_pin)
    pin = gateway_cpu is not None
    echo_process, echo_url = await start_echo(gateway_cpu)
    connector = aiohttp.TCPConnector(limit=2048)
    results: dict[str, Any] = {"pinned": pin, "gateway_cpu": gateway_cpu}
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            results["one_worker"] = await run_dev_stack(
                session, settings, run, 1, gateway_cpu, (echo_url, echo_process.pid), flame
            )
            if not args.skip_scaling:
                os.sched_setaffinity(0, everything)
                two = dataclasses.replace(settings, connections=settings.connections * 2)
                results["two_workers"] = await run_dev_stack(session, two, run, 2, None, None)
    finally:
        os.sched_setaffinity(0, everything)
        await stop_process(echo_process)
        await drop_keys(f"bench-{run}")
    return results


async def drop_keys(prefix: str) -> None:
    """Delete the run's online-store keys."""
    client = aioredis.Redis.from_url(os.environ.get("SCOREGATE_REDIS_URL", REDIS))
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for first in range(0, len(keys), 1000):
            await client.delete(*keys[first : first + 1000])
    finally:
        await client.aclose()


async def running_stack(
    args: argparse.Namespace, settings: Settings, run: str, flame: FlameGraph | None
) -> dict[str, Any]:
    """A stack someone else started: one measurement, the echo on the gateway's cores."""
    keys = parse_dev_keys(args.keys or os.environ.get("SCOREGATE_DEV_KEYS", ""))
    scorer = keys.get("scorer") or os.environ.get("SCOREGATE_SCORER_KEY")
    if not scorer:
        raise SystemExit("--url needs a scorer key: --keys scorer=KEY or SCOREGATE_SCORER_KEY")
    port = urlsplit(args.url).port or 80
    gateway_pid = args.gateway_pid or listening_pid(port)
    cpus = allowed_cpus(gateway_pid) if gateway_pid else None
    echo_cpus = cpus if cpus and cpus != allowed_cpus(os.getpid()) else None
    echo_process, echo_url = await start_echo(echo_cpus)
    env = dict(os.environ)
    env["SCOREGATE_DATABASE_URL"] = (
        args.database_url or env.get("SCOREGATE_DATABASE_URL") or DEFAULT_DATABASE_URL
    )
    results: dict[str, Any] = {"workers": None, "gateway_cpus": cpus}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2048)) as session:
            info = await stack_info(session, args.url.rstrip("/"), scorer, env, gateway_pid, {})
            echo = (echo_url, echo_process.pid)
            await measure_stack(session, info, echo, settings, run, results, flame)
    except Exception:  # keep what was measured and say what broke
        results["error"] = traceback.format_exc()
        print(results["error"], file=sys.stderr, flush=True)
    finally:
        await stop_process(echo_process)
    return {"pinned": echo_cpus is not None, "one_worker": results}


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for, from the detailed results (None where a step
    did not run)."""
    one = results.get("one_worker", {})
    closed = one.get("closed_loop", {}).get("median", {})
    rows = [
        r for r in one.get("sweep", []) if not r["score"]["saturated"] and r.get("capacity_ratio")
    ]
    score_cpu, echo_cpu = (
        closed.get("score_cpu_ms_per_request"),
        closed.get("echo_cpu_ms_per_request"),
    )
    figures: dict[str, Any] = {
        "capacity_ratio_at_saturation": closed.get("capacity_ratio"),
        "score_cpu_ms_per_request": score_cpu,
        "echo_cpu_ms_per_request": echo_cpu,
        "score_per_s_per_core": round(1000 / score_cpu) if score_cpu else None,
        "echo_per_s_per_core": round(1000 / echo_cpu) if echo_cpu else None,
        "wrk_capacity_ratio_at_saturation": closed.get("wrk_capacity_ratio"),
        "wrk_score_per_s": closed.get("wrk_score_per_s"),
        "wrk_score_cpu_ms_per_request": closed.get("wrk_score_cpu_ms_per_request"),
        "wrk_echo_per_s": closed.get("wrk_echo_per_s"),
        "wrk_echo_cpu_ms_per_request": closed.get("wrk_echo_cpu_ms_per_request"),
        "wrk_generator_core_share": closed.get("wrk_generator_core_share"),
        "flame_graph": one.get("closed_loop", {}).get("profiled_round", {}).get("flame_graph"),
        "capacity_ratio_per_rate": {f"{r['rate_per_s']:g}": r["capacity_ratio"] for r in rows},
        "own_overhead_ms": one.get("overhead", {}).get("median", {}).get("own_overhead_ms"),
        "own_overhead_ms_per_round": [
            r["own_overhead_ms"] for r in one.get("overhead", {}).get("rounds", [])
        ],
        "integrity_one_worker": one.get("integrity", {}).get("ok"),
        "one_worker": _capacity(one),
    }
    if "two_workers" in results:
        two = results["two_workers"]
        figures["integrity_two_workers"] = two.get("integrity", {}).get("ok")
        figures["two_workers"] = _capacity(two)
        figures["scaling_two_over_one"] = {
            key: _share(figures["two_workers"], figures["one_worker"], key)
            for key in (
                "sustained_per_s",
                "closed_loop_median_per_s",
                "wrk_median_per_s",
                "peak_per_s",
            )
        }
    errors = [k for k in ("one_worker", "two_workers") if "error" in results.get(k, {})]
    if errors:
        figures["failed_steps"] = errors
    return figures


def _share(top: dict[str, Any] | None, bottom: dict[str, Any] | None, key: str) -> float | None:
    a, b = (top or {}).get(key), (bottom or {}).get(key)
    return round(a / b, 3) if a and b else None


def _capacity(results: dict[str, Any]) -> dict[str, Any] | None:
    """Throughput of ``/score`` three ways, and what each process took of the machine's
    cores in the phase with the most.

    ``sustained_per_s``: the highest open-loop rate served without saturating (p99
    within the deadline, under 1% errors); ``closed_loop_median_per_s``: the median of
    the closed-loop rounds from this process, ``wrk_median_per_s`` from wrk;
    ``peak_per_s``: the most any phase achieved (the profiled round aside).
    """
    rounds = results.get("closed_loop", {}).get("rounds", [])
    phases = [(f"closed loop {i + 1}", r["score"]) for i, r in enumerate(rounds)]
    phases += [(f"wrk {i + 1}", r["wrk_score"]) for i, r in enumerate(rounds) if "wrk_score" in r]
    sweep = results.get("sweep", [])
    phases += [(f"{r['rate_per_s']:g}/s", r["score"]) for r in sweep]
    if not phases:
        return None
    name, best = max(phases, key=lambda p: p[1]["achieved_per_s"] or 0)
    sustained = [r["score"]["achieved_per_s"] for r in sweep if not r["score"]["saturated"]]
    cpu = best["cpu"]
    return {
        "sustained_per_s": max(sustained) if sustained else None,
        "closed_loop_median_per_s": results["closed_loop"]["median"]["score_per_s"]
        if rounds
        else None,
        "wrk_median_per_s": results["closed_loop"]["median"].get("wrk_score_per_s")
        if rounds
        else None,
        "peak_per_s": best["achieved_per_s"],
        "peak_phase": name,
        "gateway_cpu_ms_per_request_at_peak": best["server_cpu_ms_per_request"],
        "core_shares_at_peak": {k: v["core_share"] for k, v in cpu["processes"].items()},
        "unattributed_core_share_at_peak": cpu["unattributed_core_share"],
        "cores_busy_at_peak": cpu["cores_busy"],
    }


def chart_series(results: dict[str, Any], metric: str) -> list[Series]:
    """Lines of one chart: latency percentiles (``metric`` "latency") or CPU per request."""
    lines = []
    plan = [("one_worker", "score", "/score, 1 worker", "#1f5fbf", ("p50", "p95", "p99"))]
    plan.append(("one_worker", "echo", "echo", "#2a9d3a", ("p50", "p95", "p99")))
    plan.append(("two_workers", "score", "/score, 2 workers", "#d9731a", ("p50", "p99")))
    for stack, key, label, colour, percentiles in plan:
        rows = [r for r in results.get(stack, {}).get("sweep", []) if key in r]
        saturated = frozenset(r["rate_per_s"] for r in rows if r[key]["saturated"])
        fields = (
            [(pct, f"{pct}_ms") for pct in percentiles]
            if metric == "latency"
            else [("cpu", "server_cpu_ms_per_request")]
        )
        for name, field_ in fields:
            points = [(r["rate_per_s"], r[key][field_]) for r in rows if r[key][field_]]
            if points:
                lines.append(Series(label, name, colour, points, saturated))
    return lines


def compact(report: dict[str, Any]) -> dict[str, Any]:
    """The report without per-round and per-process detail: what a reader compares."""
    keep = ("achieved_per_s", "p50_ms", "p95_ms", "p99_ms", "error_rate")
    keep += ("server_cpu_ms_per_request", "source_fetch_share", "saturated")
    stacks = {}
    for name, stack in report["results"].items():
        if not isinstance(stack, dict):
            continue
        rates = [
            {"rate_per_s": row["rate_per_s"]}
            | {t: {k: row[t].get(k) for k in keep} for t in ("score", "echo") if t in row}
            for row in stack.get("sweep", [])
        ]
        stacks[name] = {
            "rates": rates,
            "closed_loop": stack.get("closed_loop", {}).get("median"),
            "overhead": stack.get("overhead", {}).get("median"),
            "integrity": stack.get("integrity"),
        }
    return {
        key: report[key] for key in ("when", "code", "machine", "settings", "wall_s", "headline")
    } | {"stacks": stacks}


def write_outputs(report: dict[str, Any], stamp: str) -> tuple[Path, Path]:
    """The JSON results (in full and in summary) and the HTML charts under
    ``loadtests/results/``."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"benchmark-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    summary = RESULTS / f"benchmark-{stamp}.summary.json"
    summary.write_text(json.dumps(compact(report), indent=2))
    figures = {k: json.dumps(v) for k, v in report["headline"].items()}
    chart = RESULTS / f"benchmark-{stamp}.html"
    charts = [
        (
            "Latency per offered rate",
            "latency from the scheduled send (ms, log)",
            chart_series(report["results"], "latency"),
        ),
        (
            "Server CPU per request (its own process and workers)",
            "CPU ms per request (log)",
            chart_series(report["results"], "cpu"),
        ),
    ]
    chart.write_text(page(charts, f"scoregate benchmark {stamp}", figures))
    return out, chart


def print_summary(report: dict[str, Any]) -> None:
    """Per-rate percentiles, closed-loop and overhead medians, the headline figures."""
    results = report["results"]
    print("\n== per rate (open loop, latency from the scheduled send, ms)")
    for stack in ("one_worker", "two_workers"):
        for row in results.get(stack, {}).get("sweep", []):
            for key in ("score", "echo"):
                if key in row:
                    f = row[key]
                    print(
                        f"{stack:<12} {key:<6} {row['rate_per_s']:>6g}/s achieved"
                        f" {f['achieved_per_s']:>7} p50 {f['p50_ms']:>7} p95 {f['p95_ms']:>7}"
                        f" p99 {f['p99_ms']:>8} cpu {f['server_cpu_ms_per_request']} ms/req"
                    )
    for stack in ("one_worker", "two_workers"):
        closed = results.get(stack, {}).get("closed_loop")
        if closed:
            print(f"\n== {stack}: closed loop, {closed['connections']} connections, medians")
            print(json.dumps(closed["median"]))
    overhead = results.get("one_worker", {}).get("overhead")
    if overhead:
        print(f"\n== own overhead at {overhead['rate_per_s']:g}/s, medians of rounds")
        print(json.dumps(overhead["median"]))
    print("\n== headline")
    print(json.dumps(report["headline"], indent=2))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a ~2-minute smoke run")
    parser.add_argument("--rates", help=f"comma-separated rates (default {FULL_RATES})")
    parser.add_argument(
        "--seconds",
        type=float,
        help="per rate and target, split over the rounds (default 12, quick 4)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        help="closed loop, per gateway worker (default 16: see the module docstring)",
    )
    parser.add_argument(
        "--rounds", type=int, help="closed-loop and overhead rounds (default 3, quick 2)"
    )
    parser.add_argument("--moderate-rate", type=float, default=100.0, help="own-overhead rate")
    parser.add_argument("--customers", type=int, help="customers in the mix (default 2000)")
    parser.add_argument("--gateway-cpu", type=int, default=0, help="core the gateway gets")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--skip-scaling", action="store_true", help="no 2-worker stack")
    parser.add_argument(
        "--database-url",
        help=f"own stack: its database, dropped first (default {DATABASE}); with --url:"
        " the gateway's (default SCOREGATE_DATABASE_URL or scoregate dev's)",
    )
    parser.add_argument("--url", help="measure the gateway running at this URL instead")
    parser.add_argument("--keys", help="with --url: scorer=KEY[,...] (SCOREGATE_DEV_KEYS)")
    parser.add_argument("--gateway-pid", type=int, help="with --url: the gateway's pid")
    parser.add_argument("--wrk", help="wrk's path (default: wrk on PATH)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads (default 1)")
    parser.add_argument("--no-wrk", action="store_true", help="no wrk phases")
    parser.add_argument(
        "--py-spy", help=f"py-spy's path (default: py-spy on PATH, else {SPY_VENV})"
    )
    parser.add_argument("--no-flame-graph", action="store_true", help="no profiled round")
    return parser


def code_version() -> dict[str, Any]:
    """The commit measured, and the gateway's and the sample stack's files that differ
    from it (the stack runs from the work tree as it is when it starts)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": git(
            "status", "--porcelain", "--", "contracts", "gateway", "writeback", "sample"
        ).splitlines(),
    }


async def main(code: dict[str, Any]) -> None:
    """Run the benchmark and write its report."""
    args = _parser().parse_args()
    settings = Settings.from_args(args)
    if args.url and not args.customers:
        settings.customers = 200  # what `scoregate dev` seeds
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = uuid.uuid4().hex[:6]
    flame = None
    if not args.no_flame_graph and (py_spy := find_tool(args.py_spy, "py-spy", SPY_VENV)):
        RESULTS.mkdir(exist_ok=True)
        flame = FlameGraph(py_spy, RESULTS / f"benchmark-{stamp}-score.svg")
    load_before = os.getloadavg()
    started = time.perf_counter()
    if args.url:
        results = await running_stack(args, settings, run, flame)
    else:
        results = await own_stack(args, settings, run, flame)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": code,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "settings": settings.__dict__,
        "wall_s": round(time.perf_counter() - started, 1),
        "headline": {},
        "results": results,
    }
    report["headline"] = headline(results)
    out, chart = write_outputs(report, stamp)
    print_summary(report)
    print(f"load average before {load_before}, after {report['machine']['loadavg_after']}")
    print(f"\nwritten {out}\nchart   {chart}")
    if report["headline"]["flame_graph"]:
        print(f"flame   {report['headline']['flame_graph']}")


if __name__ == "__main__":
    uvloop.run(main(code_version()))
