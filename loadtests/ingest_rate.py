"""One ``scoregate ingest`` process's sustained rate into Redis, from a backlog on the broker.

Starts a local broker (Tansu) on a free port, creates the sample registry's stream
topics (4 partitions each) and produces a backlog built by the sample operational
system (:class:`scoregate_dev.operational.SampleEvents`): every customer's and
merchant's snapshot, then its steps (transaction aggregates, profile changes, and
Debezium change events of the merchant risk table: updates, deletes with their
tombstones, rows created again). Change events carry the JSON converter's schema
envelope with ``--with-schema``.

Then, in rounds, one ``scoregate ingest`` process (pinned with ``taskset`` to one core,
this script and the broker to the others) reads the whole backlog as a consumer group
of its own into a Redis key prefix of its own. A round is timed from the group's first
committed offset to its committed offsets reaching the end offsets, so the start-up
and the group join do not count; the worker commits a batch only once it is in Redis.
Feature values are counted per record as the worker offers them to the store (a
feature update's features, a change event's mapped columns; a tombstone right after
its delete adds none), and checked against the worker's report and its own
``scoregate_ingest_updates`` counter. The process's CPU seconds over the same window
come from ``/proc``, as do Redis's and the broker's: on a shared machine the values per
CPU second of the worker say more about its code than the rate does.

At the end of each round a sample of entities is read back from Redis: each must hold
what the last event of that entity said (a deleted merchant holds nothing). The
figures are the medians over rounds; the target is 20,000 feature values a second.

    .venv/bin/python loadtests/ingest_rate.py                  # 200k records, 3 rounds
    .venv/bin/python loadtests/ingest_rate.py --with-schema    # change events enveloped
    .venv/bin/python loadtests/ingest_rate.py --quick          # 50k records, 2 rounds
    git worktree add /tmp/base HEAD~3 && .venv/bin/python loadtests/ingest_rate.py \
        --compare /tmp/base                                    # rounds alternate with old code
    .venv/bin/python loadtests/ingest_rate.py --profile py-spy # top costs of the worker

Prints the figures and writes ``loadtests/results/ingest-rate-<time>.json`` (and, with
``--profile``, py-spy's folded stacks beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from benchmark import RESULTS, drop_keys
from cpu_meter import CpuMeter, allowed_cpus, listening_pid
from prometheus_client.parser import text_string_to_metric_families

from gateway.deadline import Deadline
from gateway.features.online_store import OnlineStore
from gateway.registry import Registry
from scoregate_dev.broker import LocalBroker, free_port, wait_for_port
from scoregate_dev.operational import (
    PROFILE_FEATURES,
    TXN_FEATURES,
    Record,
    SampleEvents,
    committed,
    create_topics,
    load_for_streams,
)
from scoregate_dev.stack import SAMPLE_REGISTRY

REDIS = "redis://127.0.0.1:6379/0"
PARTITIONS = 4
TARGET_VALUES_PER_S = 20_000
POLL_S = 0.05
"""How often the group's committed offsets are read."""


@dataclass
class Settings:
    """How big the backlog is and how the worker runs."""

    records: int
    customers: int
    merchants: int
    rounds: int
    with_schema: bool
    cdc_share: float
    seed: int
    batch: int | None
    ingest_cpu: int | None
    checked: int
    limit_s: float
    compare: Path | None
    profile: str | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """Defaults for a full or a quick run, overridden by the given options."""
        everything = os.sched_getaffinity(0)
        pinned = len(everything) >= 2 and not args.no_pin
        return cls(
            records=args.records or (50_000 if args.quick else 200_000),
            customers=args.customers,
            merchants=args.merchants,
            rounds=args.rounds or (2 if args.quick else 3),
            with_schema=args.with_schema,
            cdc_share=args.cdc_share,
            seed=args.seed,
            batch=args.batch,
            ingest_cpu=args.ingest_cpu if pinned else None,
            checked=args.checked,
            limit_s=args.limit_s,
            compare=args.compare.resolve() if args.compare else None,
            profile=args.profile,
        )


@dataclass
class Backlog:
    """The records on the broker, where they landed, and what they end in.

    ``values[tp][i]`` is how many feature values the records of ``tp`` before offset
    ``offsets[tp][i]`` carry (``offsets`` ascending), so any committed offset says how
    many values are in Redis.
    """

    events: SampleEvents
    ends: dict[TopicPartition, int]
    offsets: dict[TopicPartition, list[int]] = field(default_factory=dict)
    values: dict[TopicPartition, list[int]] = field(default_factory=dict)
    records: int = 0
    total_values: int = 0
    value_bytes: int = 0

    def values_before(self, positions: dict[TopicPartition, int]) -> int:
        """Feature values in the records before ``positions``, over all partitions."""
        total = 0
        for tp, position in positions.items():
            offsets = self.offsets.get(tp, [])
            # Offsets are dense per partition on this broker; bisect keeps it exact anyway.
            total += self.values[tp][bisect_left(offsets, position)] if offsets else 0
        return total


def values_in(record: Record, update_topic: str, columns: int) -> int:
    """How many feature values the worker offers the store for one record.

    A tombstone comes right after its delete here, and so writes nothing.
    """
    if record.value is None:
        return 0
    if record.topic == update_topic:
        return len(json.loads(record.value)["features"])
    value = json.loads(record.value)
    payload = value["payload"] if set(value) == {"schema", "payload"} else value
    return columns if payload.get("op") in ("c", "u", "r", "d") else 0


def build(registry: Registry, settings: Settings) -> tuple[SampleEvents, list[Record]]:
    """The snapshot of every customer and merchant, then steps up to ``records``."""
    events = SampleEvents(
        registry,
        [f"c-{i}" for i in range(1, settings.customers + 1)],
        [f"m-{i}" for i in range(1, settings.merchants + 1)],
        seed=settings.seed,
        with_schema=settings.with_schema,
        cdc_share=settings.cdc_share,
    )
    records = events.snapshot()
    while len(records) < settings.records:
        records += events.step()
    return events, records


async def produce(
    bootstrap: str, registry: Registry, events: SampleEvents, records: Sequence[Record]
) -> Backlog:
    """Send every record and note per partition where each landed and what it carries."""
    update_topic = next(s.topic for s in registry.file.streams if s.format == "feature_update")
    columns = max(
        (len(t.columns) for s in registry.file.streams for t in s.tables),
        default=0,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        acks="all",
        linger_ms=5,
        max_batch_size=512 * 1024,
        client_id="ingest-rate",
    )
    await producer.start()
    landed: list[tuple[TopicPartition, int, int]] = []
    try:
        chunk = 5000
        for first in range(0, len(records), chunk):
            part = records[first : first + chunk]
            deliveries = [
                await producer.send(r.topic, r.value, key=r.key, headers=r.headers) for r in part
            ]
            for record, metadata in zip(part, await asyncio.gather(*deliveries), strict=True):
                tp = TopicPartition(metadata.topic, metadata.partition)
                landed.append((tp, metadata.offset, values_in(record, update_topic, columns)))
    finally:
        await producer.stop()
    backlog = Backlog(events=events, ends={})
    for tp, offset, values in sorted(landed, key=lambda item: (item[0], item[1])):
        offsets = backlog.offsets.setdefault(tp, [])
        counts = backlog.values.setdefault(tp, [0])
        offsets.append(offset)
        counts.append(counts[-1] + values)
        backlog.ends[tp] = offset + 1
    backlog.records = len(records)
    backlog.total_values = sum(counts[-1] for counts in backlog.values.values())
    backlog.value_bytes = sum(len(r.value or b"") for r in records)
    return backlog


def expected(events: SampleEvents, registry: Registry, entity: str, entity_id: str) -> dict:
    """What the last event of an entity left in the store (a deleted row: nothing)."""
    if entity == "customer":
        state = events.customers[entity_id]
        values = {
            "txn_count_30m": state.txn_count,
            "txn_amount_sum_24h": state.amount_sum,
            "distinct_merchants_7d": state.merchants,
            "account_age_days": state.age_days,
            "kyc_level": state.kyc,
            "country_risk": state.country_risk,
        }
        return {
            name: value
            for name, value in values.items()
            if name in registry.features and registry.features[name].entity == "customer"
        }
    merchant = events.merchants[entity_id]
    return {} if merchant.deleted else {"chargeback_rate_90d": merchant.chargeback_rate}


async def check(
    backlog: Backlog, registry: Registry, prefix: str, sample: int, seed: int
) -> dict[str, Any]:
    """Read a sample of entities back: each holds what its last event said."""
    rng = random.Random(seed)
    customers = list(backlog.events.customers)
    merchants = list(backlog.events.merchants)
    picked = [("customer", c) for c in rng.sample(customers, min(sample, len(customers)))]
    picked += [("merchant", m) for m in merchants]
    names = {
        "customer": [n for n in (*TXN_FEATURES, *PROFILE_FEATURES) if n in registry.features],
        "merchant": ["chargeback_rate_90d"],
    }
    store = OnlineStore.from_url(REDIS, prefix, registry.file.online_store, 2)
    wrong: list[dict[str, Any]] = []
    try:
        for first in range(0, len(picked), 500):
            part = picked[first : first + 500]
            rows = await store.read([(e, i, names[e]) for e, i in part], Deadline(10))
            for (entity, entity_id), row in zip(part, rows, strict=True):
                want = expected(backlog.events, registry, entity, entity_id)
                got = {name: stored.value for name, stored in row.items()}
                if got != want:
                    wrong.append({"entity": f"{entity}:{entity_id}", "want": want, "got": got})
    finally:
        await store.close()
    return {"entities": len(picked), "wrong": len(wrong), "first_wrong": wrong[:3]}


async def scrape_updates(port: int) -> dict[str, float]:
    """The worker's ``scoregate_ingest_updates`` counter, summed per outcome."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "scoregate_ingest_updates":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                outcome = sample.labels["outcome"]
                totals[outcome] = totals.get(outcome, 0.0) + sample.value
    return totals


async def settled_updates(port: int, limit_s: float = 5.0) -> dict[str, float]:
    """The counter once it stops moving: the worker counts a batch just after its commit."""
    updates = await scrape_updates(port)
    until = time.perf_counter() + limit_s
    while time.perf_counter() < until:
        await asyncio.sleep(0.2)
        again = await scrape_updates(port)
        if again == updates:
            break
        updates = again
    return updates


@dataclass
class Worker:
    """One ``scoregate ingest`` process of a round."""

    process: asyncio.subprocess.Process
    metrics_port: int
    log: Path
    profiler: asyncio.subprocess.Process | None = None

    @classmethod
    async def start(
        cls,
        env: dict[str, str],
        cpu: int | None,
        log: Path,
        metrics_port: int,
        code: Path | None = None,
    ) -> Worker:
        """Start the worker, pinned to ``cpu`` if one is given, of the checkout ``code``."""
        prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
        if code is not None:
            # The checkout's packages come before the ones installed in the environment.
            env = {
                **env,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")])),
            }
        with log.open("ab") as err:
            process = await asyncio.create_subprocess_exec(
                *prefix,
                sys.executable,
                "-m",
                "gateway.cli",
                "ingest",
                env=env,
                cwd=code,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        return cls(process, metrics_port, log)

    async def stop(self) -> dict[str, Any] | None:
        """Ask it to stop (it finishes its batch) and return the report it prints."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                out, _ = await self.process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
            return None
        if self.profiler is not None:
            # py-spy writes its file once the process it samples is gone.
            async with asyncio.timeout(30):
                await self.profiler.wait()
        lines = out.decode().strip().splitlines()
        with contextlib.suppress(ValueError, IndexError):
            report: dict[str, Any] = json.loads(lines[-1])
            return report
        return None


async def start_profiler(py_spy: str, pid: int, out: Path) -> asyncio.subprocess.Process:
    """py-spy sampling the worker until it exits, stacks folded per function."""
    return await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--function",
        "--nonblocking",
        "--rate",
        "200",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def top_costs(folded: Path, count: int = 15) -> dict[str, Any]:
    """The functions the worker's samples were in: own time and time below, as shares."""
    own: dict[str, int] = {}
    below: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        # The first two frames name the process and the thread.
        frames = [f for f in stack.split(";")[2:] if f]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            below[frame] = below.get(frame, 0) + n

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(counts.items(), key=lambda item: -item[1])[:count]
        return [(name, round(n / total, 3)) for name, n in best]

    return {"samples": total, "own": ranked(own), "inclusive": ranked(below)}


def profile_of(folded: Path) -> dict[str, Any] | None:
    """The top costs in a py-spy file, if py-spy wrote one."""
    if not folded.exists():
        return None
    return {"folded": str(folded), **top_costs(folded)}


async def watch(
    bootstrap: str,
    group: str,
    backlog: Backlog,
    worker: Worker,
    meter: CpuMeter,
    limit_s: float,
    profile: tuple[str, Path] | None = None,
) -> dict[str, Any]:
    """Time the group from its first committed offset to the end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        async with asyncio.timeout(limit_s):
            while True:
                if worker.process.returncode is not None:
                    raise RuntimeError(f"the worker exited early; see {worker.log}")
                first = await committed(consumer, backlog.ends)
                if any(first.values()):
                    break
                await asyncio.sleep(POLL_S / 5)
            if profile is not None:
                worker.profiler = await start_profiler(profile[0], worker.process.pid, profile[1])
            started, before = time.perf_counter(), meter.read()
            while True:
                last = await committed(consumer, backlog.ends)
                if all(last[tp] >= end for tp, end in backlog.ends.items()):
                    break
                if worker.process.returncode is not None:
                    raise RuntimeError(f"the worker exited early; see {worker.log}")
                await asyncio.sleep(POLL_S)
            wall_s, after = time.perf_counter() - started, meter.read()
    finally:
        await consumer.stop()
    records = sum(last.values()) - sum(first.values())
    values = backlog.values_before(last) - backlog.values_before(first)
    cpu = meter.report(before, after, wall_s)
    ingest_cpu_s = cpu["processes"]["ingest"]["cpu_s"]  # type: ignore[index]
    return {
        "seconds": round(wall_s, 3),
        "records": records,
        "values": values,
        "records_per_s": round(records / wall_s),
        "values_per_s": round(values / wall_s),
        "ingest_cpu_s": ingest_cpu_s,
        "ingest_core_share": round(ingest_cpu_s / wall_s, 3),
        "values_per_ingest_cpu_s": round(values / ingest_cpu_s) if ingest_cpu_s else None,
        "cpu": cpu,
    }


async def one_round(
    number: int,
    run: str,
    settings: Settings,
    broker: LocalBroker,
    registry_path: Path,
    registry: Registry,
    backlog: Backlog,
    workdir: Path,
    variant: str,
    profile_to: Path | None,
) -> dict[str, Any]:
    """One worker over the whole backlog, in a group and key prefix of its own."""
    group = prefix = f"ingest-rate-{run}-{variant}-{number}"
    code = settings.compare if variant == "compare" else None
    metrics_port = free_port()
    env = {
        **os.environ,
        "SCOREGATE_REGISTRY": str(registry_path),
        "SCOREGATE_REDIS_URL": REDIS,
        "SCOREGATE_REDIS_PREFIX": prefix,
        "SCOREGATE_KAFKA_BOOTSTRAP": broker.bootstrap,
        "SCOREGATE_INGEST_GROUP": group,
        "SCOREGATE_INGEST_METRICS_PORT": str(metrics_port),
    }
    if settings.batch:
        env["SCOREGATE_INGEST_BATCH"] = str(settings.batch)
    worker = await Worker.start(
        env, settings.ingest_cpu, workdir / f"ingest-{variant}-{number}.log", metrics_port, code
    )
    profile = (settings.profile, profile_to) if settings.profile and profile_to else None
    report: dict[str, Any] | None = None
    try:
        meter = CpuMeter(
            trees={},
            named={"redis": "redis-server"},
            single={"ingest": worker.process.pid, "broker": listening_pid(broker.port)},
        )
        result = await watch(
            broker.bootstrap, group, backlog, worker, meter, settings.limit_s, profile
        )
        result["ingest_cpus"] = allowed_cpus(worker.process.pid)
        await wait_for_port("127.0.0.1", metrics_port)
        updates = await settled_updates(metrics_port)
        result["worker_counted_values"] = round(sum(updates.values()))
        result["worker_outcomes"] = {k: round(v) for k, v in sorted(updates.items())}
        result["check"] = await check(backlog, registry, prefix, settings.checked, number)
    finally:
        report = await worker.stop()
        await drop_keys(prefix)
    result["worker_report"] = report
    reported = sum(report.get(k, 0) for k in ("written", "older", "duplicate")) if report else None
    # The backlog's count, the worker's report and its counter all say the same.
    result["counts_agree"] = (
        backlog.total_values == reported == result["worker_counted_values"]
        and bool(report)
        and report.get("dead_lettered") == 0
    )
    if profile_to is not None and (profile := profile_of(profile_to)) is not None:
        result["profile"] = profile
    return result


def medians(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of each rate and CPU figure."""
    keys = (
        "values_per_s",
        "records_per_s",
        "ingest_core_share",
        "values_per_ingest_cpu_s",
        "seconds",
    )
    out: dict[str, Any] = {}
    for key in keys:
        found = [r[key] for r in rounds if r.get(key) is not None]
        out[key] = statistics.median(found) if found else None
    for group in ("redis", "broker"):
        shares = [r["cpu"]["processes"].get(group, {}).get("core_share") for r in rounds]
        found = [s for s in shares if s is not None]
        out[f"{group}_core_share"] = statistics.median(found) if found else None
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=0, help="records in the backlog")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--merchants", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument(
        "--with-schema", action="store_true", help="change events with the schema envelope"
    )
    parser.add_argument(
        "--cdc-share", type=float, default=0.2, help="share of steps that are change events"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=None, help="SCOREGATE_INGEST_BATCH")
    parser.add_argument("--ingest-cpu", type=int, default=1, help="the core the worker runs on")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--checked", type=int, default=1000, help="customers read back")
    parser.add_argument("--limit-s", type=float, default=600.0, help="longest a round may take")
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="a checkout of other code (git worktree): rounds alternate between it and this",
    )
    parser.add_argument(
        "--profile",
        metavar="PY_SPY",
        default=None,
        help="py-spy to sample the first round's worker with (folded stacks in results/)",
    )
    parser.add_argument("--quick", action="store_true")
    return parser.parse_args()


async def main() -> None:
    settings = Settings.from_args(parse_args())
    run = uuid.uuid4().hex[:6]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ingest-rate-"))
    everything = os.sched_getaffinity(0)
    if settings.ingest_cpu is not None:
        # The broker, started below, inherits this: it shares the other cores with us.
        os.sched_setaffinity(0, everything - {settings.ingest_cpu})
    registry_path = workdir / "registry.toml"
    registry_path.write_text(
        Template(SAMPLE_REGISTRY.read_text()).substitute(
            sources_url="http://127.0.0.1:9", model_url="http://127.0.0.1:9"
        )
    )
    registry = load_for_streams(registry_path)
    broker = LocalBroker(log_path=workdir / "broker.log")
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": settings.__dict__,
    }
    try:
        await broker.start()
        started = time.perf_counter()
        events, records = build(registry, settings)
        built_s = time.perf_counter() - started
        await create_topics(broker.bootstrap, events.topics, PARTITIONS)
        backlog = await produce(broker.bootstrap, registry, events, records)
        del records
        report["backlog"] = {
            "records": backlog.records,
            "values": backlog.total_values,
            "values_per_record": round(backlog.total_values / backlog.records, 3),
            "value_bytes_avg": round(backlog.value_bytes / backlog.records),
            "partitions": {f"{tp.topic}/{tp.partition}": end for tp, end in backlog.ends.items()},
            "built_s": round(built_s, 1),
            "produced_s": round(time.perf_counter() - started - built_s, 1),
        }
        print(f"backlog: {json.dumps(report['backlog'])}", flush=True)
        variants = ["this", "compare"] if settings.compare else ["this"]
        rounds: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
        for number in range(1, settings.rounds + 1):
            # Alternate which code goes first, so a drift of the machine hits both alike.
            for variant in variants if number % 2 else variants[::-1]:
                profile_to = None
                if settings.profile and not rounds[variant]:
                    profile_to = RESULTS / f"ingest-profile-{stamp}-{variant}.txt"
                result = await one_round(
                    number,
                    run,
                    settings,
                    broker,
                    registry_path,
                    registry,
                    backlog,
                    workdir,
                    variant,
                    profile_to,
                )
                hidden = ("cpu", "worker_report", "profile")
                shown = {k: v for k, v in result.items() if k not in hidden}
                print(f"round {number} {variant}: {json.dumps(shown)}", flush=True)
                rounds[variant].append(result)
        report["rounds"] = rounds
        report["median"] = {variant: medians(found) for variant, found in rounds.items()}
        report["target_values_per_s"] = TARGET_VALUES_PER_S
        report["meets_target"] = (
            report["median"]["this"]["values_per_s"] or 0
        ) >= TARGET_VALUES_PER_S
        report["correct"] = all(
            r["check"]["wrong"] == 0 and r["counts_agree"]
            for found in rounds.values()
            for r in found
        )
        report["profile"] = {
            variant: found[0]["profile"]
            for variant, found in rounds.items()
            if "profile" in found[0]
        }
    finally:
        await broker.stop()
        os.sched_setaffinity(0, everything)
    out = RESULTS / f"ingest-rate-{stamp}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    summary = {
        key: report[key]
        for key in ("backlog", "median", "target_values_per_s", "meets_target", "correct")
    }
    summary["backlog"] = {k: v for k, v in report["backlog"].items() if k != "partitions"}
    print(json.dumps(summary, indent=2))
    for variant, profile in report.get("profile", {}).items():
        print(f"profile of {variant} ({profile['samples']} samples, {profile['folded']}):")
        for kind in ("own", "inclusive"):
            print(f"  {kind}:")
            for name, share in profile[kind]:
                print(f"    {share:6.1%}  {name}")
    print(f"written to {out}; worker logs in {workdir}")


if __name__ == "__main__":
    asyncio.run(main())
