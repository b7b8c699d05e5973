"""Soak: ``POST /score`` open loop at half its capacity for minutes; does the gateway grow?

Starts the dev stack as the benchmark does (its functions: a database and Redis key
prefix of the run's own, one gateway worker pinned to ``--gateway-cpu`` and everything
else this script starts on the other cores), measures ``/score``'s capacity with a
short closed-loop phase (wrk, as the benchmark's; this process's own closed loop
without wrk) unless ``--rate`` is given, then at half that rate:

1. a warm-up (``--warmup-minutes``, 1): the gateway's pools, caches and its memory of
   recent answers fill;
2. ``--minutes`` (10) of open-loop load, one phase a minute (latency from the
   scheduled send, so no coordinated omission), the outbox drained between minutes;
3. integrity over every request sent from the warm-up on: 200 answers = audit rows =
   ``decision.made`` events, every answered decision audited, no duplicate ``ce_id``
   (the benchmark's ``integrity``; the capacity phase's requests carry ids of their
   own and are not counted: wrk leaves requests unanswered when it stops).

The resident memory of the gateway's process tree (``VmRSS`` of ``/proc/<pid>/status``,
the process and any workers) is sampled every ``--sample-s`` (10) from the start of the
warm-up. Reported: RSS at the end of the warm-up (before), at the end (after), the
most, the growth from before to after (target: at most 5%), its slope over the
minutes, and p50/p99 per minute. Writes ``loadtests/results/soak-<time>.json``; exits 1
when integrity fails or the growth is over the target.

    .venv/bin/python loadtests/soak.py                 # 10 minutes, about 13 in all
    .venv/bin/python loadtests/soak.py --minutes 1     # a short check
    .venv/bin/python loadtests/soak.py --rate 400      # no capacity phase
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvloop
from benchmark import (
    RESULTS,
    Bench,
    ScoreTraffic,
    Settings,
    StackInfo,
    Target,
    bench_for,
    code_version,
    dev_stack,
    drop_keys,
    find_tool,
    integrity,
    own_environment,
    pin_apart,
)
from cpu_meter import PROC, process_tree

DATABASE = "postgresql://postgres@127.0.0.1:5432/scoregate_soak"
GROWTH_TARGET_PCT = 5.0


def rss_kb(pid: int) -> int | None:
    """Resident memory of one process in kB (``VmRSS``), or None once it is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None  # a zombie or kernel thread has no VmRSS line


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its descendants, in kB."""
    return sum(kb for child in process_tree(pid) if (kb := rss_kb(child)) is not None)


@dataclass
class RssSampler:
    """Samples a process tree's RSS at a fixed interval, tagged with the phase."""

    pid: int
    interval_s: float
    phase: str = "warm-up"
    samples: list[dict[str, Any]] = field(default_factory=list)
    _started: float = field(default_factory=time.perf_counter)

    def sample(self) -> int:
        """Take one sample now and return it (kB)."""
        kb = tree_rss_kb(self.pid)
        elapsed = round(time.perf_counter() - self._started, 1)
        self.samples.append({"t_s": elapsed, "phase": self.phase, "rss_kb": kb})
        return kb

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)


def rss_summary(before_kb: int, after_kb: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Before, after, the most, growth % and the slope over the soak's samples."""
    soak = [s for s in samples if s["phase"] == "soak"]
    growth = (after_kb - before_kb) / before_kb * 100 if before_kb else None
    slope = None
    if len(soak) >= 2 and len({s["t_s"] for s in soak}) >= 2:
        fit = statistics.linear_regression([s["t_s"] for s in soak], [s["rss_kb"] for s in soak])
        slope = round(fit.slope * 60, 1)
    return {
        "before_kb": before_kb,
        "after_kb": after_kb,
        "max_kb": max([before_kb, after_kb, *(s["rss_kb"] for s in soak)]),
        "growth_pct": round(growth, 2) if growth is not None else None,
        "slope_kb_per_minute": slope,
        "target_growth_pct": GROWTH_TARGET_PCT,
        "within_target": growth is not None and growth <= GROWTH_TARGET_PCT,
    }


def minute_row(minute: int, figures: dict[str, Any], rss: int) -> dict[str, Any]:
    """The figures of one minute that the soak prints and keeps."""
    keep = ["achieved_per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms", "error_rate"]
    keep += ["server_cpu_ms_per_request", "degraded_share"]
    return {"minute": minute, **{k: figures.get(k) for k in keep}, "rss_kb_end": rss}


def soak_integrity(report: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's integrity report, with the soak's stricter check: answers, audit
    rows and events all equal (no request of these phases goes unanswered)."""
    exact = (
        report["answers_200"] == report["audit_rows"]
        and report["audit_rows"] == report["made_events_of_run"]
    )
    return {**report, "answers_equal_audit_rows_equal_events": exact, "ok": report["ok"] and exact}


async def measure_capacity(
    bench: Bench, score: Target, connections: int, seconds: float
) -> dict[str, Any]:
    """A short closed-loop phase at saturation: wrk when there is one."""
    if bench.wrk is not None:
        return await bench.wrk_closed(score, connections, seconds)
    return await bench.closed(score, connections, seconds)


async def soak(args: argparse.Namespace, settings: Settings, run: str) -> dict[str, Any]:
    """Start the stack, measure, soak, check; the figures."""
    await own_environment(args.database_url, f"soak-{run}")
    everything = os.sched_getaffinity(0)
    gateway_cpu = pin_apart(args.gateway_cpu, args.no_pin or args.workers > 1)
    results: dict[str, Any] = {"workers": args.workers, "gateway_cpu": gateway_cpu}
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2048)) as session,
            dev_stack(session, settings.customers, args.workers, gateway_cpu) as (stack, info),
        ):
            results["logs"] = str(stack.logs)
            await soak_stack(session, info, args, settings, run, results)
    except Exception:  # keep what was measured and say what broke
        results["error"] = traceback.format_exc()
        print(results["error"], file=sys.stderr, flush=True)
    finally:
        os.sched_setaffinity(0, everything)
        await drop_keys(f"soak-{run}")
    return results


async def soak_stack(
    session: aiohttp.ClientSession,
    info: StackInfo,
    args: argparse.Namespace,
    settings: Settings,
    run: str,
    results: dict[str, Any],
) -> None:
    """Capacity, warm-up, the minutes and integrity on a running stack."""
    if info.gateway_pid is None:
        raise RuntimeError("the gateway's pid is not known")
    bench, score = bench_for(session, info, None, settings, run)
    rate = args.rate
    if rate is None:
        score.traffic = ScoreTraffic(f"soak-{run}-c-", settings.customers)
        capacity = await measure_capacity(bench, score, settings.connections, settings.closed_s)
        results["capacity"] = capacity
        rate = round((capacity["achieved_per_s"] or 0) / 2)
        print(f"capacity {capacity['achieved_per_s']}/s: soaking at {rate}/s", flush=True)
        if rate < 1:
            raise RuntimeError(f"no capacity measured: {json.dumps(capacity)[:2000]}")
    results["rate_per_s"] = rate
    traffic = score.traffic = ScoreTraffic(f"soak-{run}-s-", settings.customers)
    sampler = RssSampler(info.gateway_pid, args.sample_s)
    sampling = asyncio.create_task(sampler.run())
    minutes: list[dict[str, Any]] = []
    results["minutes"] = minutes
    try:
        print(f"warm-up {args.warmup_minutes:g} min at {rate}/s", flush=True)
        for _ in range(args.warmup_minutes):
            warm = await bench.rate(score, rate, 60)
            print(f"  warm-up: p50 {warm['p50_ms']} p99 {warm['p99_ms']} ms", flush=True)
        sampler.phase = "soak"
        before = sampler.sample()
        for minute in range(1, args.minutes + 1):
            figures = await bench.rate(score, rate, 60)
            minutes.append(minute_row(minute, figures, sampler.sample()))
            _print_minute(minutes[-1])
        after = sampler.sample()
    finally:
        sampling.cancel()
        results["rss_samples"] = sampler.samples
        results["integrity"] = soak_integrity(
            await integrity(info, traffic, settings.drain_limit_s)
        )
        print("integrity: " + json.dumps(results["integrity"]), flush=True)
    results["rss"] = rss_summary(before, after, sampler.samples)


def _print_minute(row: dict[str, Any]) -> None:
    print(
        f"minute {row['minute']:>3}: {row['achieved_per_s']}/s p50 {row['p50_ms']} p99"
        f" {row['p99_ms']} ms errors {row['error_rate']} cpu {row['server_cpu_ms_per_request']}"
        f" ms/req rss {row['rss_kb_end'] / 1024:.1f} MiB",
        flush=True,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=10, help="minutes measured (default 10)")
    parser.add_argument("--warmup-minutes", type=int, default=1, help="default 1")
    parser.add_argument("--rate", type=float, help="requests/s (default: half the capacity)")
    parser.add_argument("--capacity-s", type=float, default=10.0, help="capacity phase's length")
    parser.add_argument("--connections", type=int, default=16, help="capacity phase (default 16)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS sample interval")
    parser.add_argument("--customers", type=int, default=2000, help="customers in the mix")
    parser.add_argument("--workers", type=int, default=1, help="gateway workers (>1: no pinning)")
    parser.add_argument("--gateway-cpu", type=int, default=0, help="core the gateway gets")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--wrk", help="wrk's path (default: wrk on PATH; without: Python)")
    parser.add_argument(
        "--database-url", default=DATABASE, help=f"dropped first (default {DATABASE})"
    )
    return parser


def settings_for(args: argparse.Namespace) -> Settings:
    """The benchmark's settings, for the parts of it the soak uses."""
    return Settings(
        rates=[],
        seconds=60.0,
        warmup_s=args.warmup_minutes * 60,
        closed_s=args.capacity_s,
        connections=args.connections,
        moderate_rate=args.rate or 0.0,
        overhead_s=0.0,
        customers=args.customers,
        rounds=args.minutes,
        wrk=find_tool(args.wrk, "wrk"),
    )


async def main(code: dict[str, Any]) -> int:
    """Run the soak, write its report; 1 if a check failed."""
    args = _parser().parse_args()
    settings = settings_for(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    load_before = os.getloadavg()
    started = time.perf_counter()
    results = await soak(args, settings, uuid.uuid4().hex[:6])
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": code,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "settings": vars(args),
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    rss, checked = results.get("rss", {}), results.get("integrity", {})
    print(f"\n== rss (gateway process tree): {json.dumps(rss)}")
    print(f"== integrity ok: {checked.get('ok')}")
    print(f"load average before {load_before}, after {report['machine']['loadavg_after']}")
    print(f"written {out}")
    return 0 if rss.get("within_target") and checked.get("ok") else 1


if __name__ == "__main__":
    # Stopped with SIGTERM as with Ctrl-C: the run is cancelled and stops its stack.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(uvloop.run(main(code_version())))
