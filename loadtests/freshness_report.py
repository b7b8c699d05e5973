"""``GET /freshness`` at a million decisions: the rollup against reading the records.

Seeds ``--decisions`` decision records (default 1,000,000) into a database of its own,
spread evenly over the last day. Each record is about the size the gateway writes
(some 8 kB): a dozen stored features with freshness and lineage, and request context,
their statuses mixed as a degraded day mixes them (about 85% fresh, 8% fallback, 4%
stale, 2.5% default, 0.5% missing) over 256 record variants, with SLAs from a minute
to a day. Rows go in by ``generate_series`` in chunks of ``--chunk``, through the same
trigger that queues every committed decision for the rollup (the seal queue's trigger
is disabled: nothing seals here).

Then:

1. the rollup (:class:`writeback.FreshnessRollup`, as every gateway runs it, batches
   of 2000) drains the queue: decisions rolled up per second; its tables are then
   analysed, as autovacuum does while they fill;
2. the freshness report (:class:`gateway.freshness.report.FreshnessReporter`, its
   cache off, so each call computes) is made ``--rounds`` times: median and p95, and
   each of its reads alone (served counts, staleness buckets, the backlog, the Redis
   signals);
3. the same figures (serves, within-SLA, statuses and staleness percentiles per
   feature over 5 minutes, an hour and a day) computed straight from the decisions
   table in one SQL over ``json_each``, ``--direct-rounds`` times, and how far its
   counts are from the rollup's: at most one slot's decisions (the rollup's windows are
   exact to one slot at their start).

    .venv/bin/python loadtests/freshness_report.py                  # 1,000,000
    .venv/bin/python loadtests/freshness_report.py --decisions 100000 --rounds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis

from contracts.decisions import DecisionRecord, StageTimings, Subject
from contracts.features import FeatureStatus, FeatureValue, Lineage
from contracts.scoring import ModelRef, ScoreRequest
from gateway.freshness.report import WINDOWS_S, FreshnessReporter
from gateway.freshness.signals import IngestSignals, read_signals
from gateway.registry import Registry, parse_registry
from writeback import (
    FreshnessRollup,
    ensure_database,
    migrate,
    serve_windows,
    staleness_windows,
)

PG = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/0"
PLACEHOLDER = "00000000-0000-4000-8000-00000000beef"
VARIANTS = 256
SLAS_MS = [60_000, 300_000, 3_600_000, 86_400_000]
FEATURES = [f"feature_{n:02d}" for n in range(12)]
STATUSES: list[tuple[FeatureStatus, float]] = [
    ("fresh", 0.85),
    ("fallback", 0.08),
    ("stale", 0.04),
    ("default", 0.025),
    ("missing", 0.005),
]

SEED = """
INSERT INTO decisions (decision_id, caller, request_id, model_name, model_version,
                       subject_entity, subject_id, decided_at, committed_at, record)
SELECT id, 'bench', id::text, 'fraud', '3', 'customer', 'c-' || (n % 50000),
       at, at + interval '2 milliseconds',
       replace(($1::text[])[1 + n % $2], $3, id::text)::json
FROM (
    SELECT n, gen_random_uuid() AS id,
           $6::timestamptz - make_interval(secs => (n::float8 / $5) * 86400) AS at
    FROM generate_series($4::bigint, $4::bigint + $7 - 1) AS n
) AS rows
"""

# The report's figures straight from the records: the day's decisions read and their
# features expanded once, then counted per window, in one statement.
DIRECT = """
WITH served AS MATERIALIZED (
    SELECT d.decided_at, f.key AS feature, f.value->>'status' AS status,
           (f.value->>'staleness_ms')::bigint AS staleness_ms,
           coalesce((f.value->>'staleness_ms')::bigint
                    <= (f.value->>'max_staleness_ms')::bigint, false) AS within
    FROM decisions AS d
    CROSS JOIN LATERAL json_each(d.record->'features') AS f
    WHERE d.decided_at > $1::timestamptz - make_interval(secs => $3::integer)
      AND d.decided_at <= $1::timestamptz
      AND f.value->>'status' IS DISTINCT FROM 'request'
)
SELECT w.window_s, v.feature,
       count(*) AS served,
       count(*) FILTER (WHERE v.within) AS within_sla,
       count(*) FILTER (WHERE v.status = 'fresh') AS fresh,
       count(*) FILTER (WHERE v.status = 'fallback') AS fallback,
       count(*) FILTER (WHERE v.status = 'stale') AS stale,
       count(*) FILTER (WHERE v.status = 'default') AS defaulted,
       count(*) FILTER (WHERE v.status = 'missing') AS missing,
       percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY v.staleness_ms)
           AS staleness
FROM unnest($2::integer[]) AS w (window_s)
JOIN served AS v ON v.decided_at > $1::timestamptz - make_interval(secs => w.window_s)
GROUP BY w.window_s, v.feature
"""


def registry_text() -> str:
    """A registry of the seeded features: one entity, one source, one stream."""
    lines = [
        '[[entities]]\nname = "customer"\nkey = "customer_id"\n',
        '[[sources]]\nname = "profile"\nurl = "http://127.0.0.1:9/profile"\nowner = "data"\n',
    ]
    for n, name in enumerate(FEATURES):
        lines.append(
            f'[[features]]\nname = "{name}"\nentity = "customer"\ndtype = "float64"\n'
            f"max_staleness_ms = {SLAS_MS[n % len(SLAS_MS)]}\n"
            f'source = "profile"\npath = "/customers/{{customer_id}}"\n'
            f'on_unavailable = "default"\ndefault = 0.0\nowner = "team-{n % 3}"\n'
        )
    lines.append(
        '[[streams]]\nname = "updates"\ntopic = "features.customer"\nformat = "feature_update"\n'
    )
    return "\n".join(lines)


def variant(rng: random.Random, now: datetime) -> str:
    """One record's JSON, its decision id the placeholder."""
    features: dict[str, FeatureValue] = {}
    lineage: dict[str, Lineage] = {}
    for n, name in enumerate(FEATURES):
        sla = SLAS_MS[n % len(SLAS_MS)]
        status = rng.choices([s for s, _ in STATUSES], [w for _, w in STATUSES])[0]
        staleness: int | None
        if status == "fresh":
            staleness = int(sla * rng.betavariate(1.2, 3.0))
        elif status == "fallback":
            staleness = int(rng.lognormvariate(5.0, 0.8))
        elif status == "stale":
            staleness = int(sla * rng.uniform(1.05, 6.0))
        else:
            staleness = None
        lineage_id = f"lin_{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}"
        event_time = None if staleness is None else now - timedelta(milliseconds=staleness)
        features[name] = FeatureValue(
            value=None if status == "missing" else round(rng.random() * 100, 3),
            status=status,
            source="online_store" if status in ("fresh", "stale") else "source:profile",
            event_time=event_time,
            ingested_at=event_time,
            staleness_ms=staleness,
            max_staleness_ms=sla,
            lineage_id=lineage_id,
            schema_version=1,
        )
        if event_time is not None:
            lineage[lineage_id] = Lineage(
                lineage_id=lineage_id,
                kind="push",
                source_system="payments",
                source_ref=f"features.customer/0/{rng.randrange(10**9)}",
                entity="customer",
                entity_id="c-1",
                event_time=event_time,
                ingested_at=event_time,
            )
    features["amount"] = FeatureValue(value=120.5, status="request", source="request")
    record = DecisionRecord(
        decision_id=PLACEHOLDER,
        request_id=PLACEHOLDER,
        caller="bench",
        model=ModelRef(name="fraud", version="3"),
        model_endpoint="http://127.0.0.1:8081/v2/models/fraud/versions/3/infer",
        registry_digest="0f0f0f0f0f0f0f0f",
        subject=Subject(entity="customer", key="customer_id", id="c-1"),
        request=ScoreRequest(
            model="fraud",
            entities={"customer_id": "c-1"},
            request_id=PLACEHOLDER,
            context={"amount": 120.5},
        ),
        outputs={"probability": [0.12]},
        decision="approve",
        decision_rule="probability < 0.5",
        degraded=any(f.status != "fresh" for f in features.values() if f.status != "request"),
        features=features,
        lineage=lineage,
        received_at=now,
        decided_at=now,
        timings=StageTimings(online_store_ms=0.4, sources_ms=0.0, model_ms=1.1, total_ms=2.0),
    )
    return msgspec.json.encode(record).decode()


async def fresh_database(name: str) -> str:
    admin = await asyncpg.connect(f"{PG}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    url = f"{PG}/{name}"
    await ensure_database(url)
    await migrate(url)
    return url


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(f"{PG}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def seed(pool: asyncpg.Pool, decisions: int, chunk: int, now: datetime) -> float:
    """Insert the decisions in chunks; returns the seconds it took."""
    rng = random.Random(13)
    variants = [variant(rng, now) for _ in range(VARIANTS)]
    print(f"record size: {statistics.mean(len(v) for v in variants):,.0f} bytes on average")
    await pool.execute("ALTER TABLE decisions DISABLE TRIGGER decisions_queue_seal")
    started = time.perf_counter()
    for first in range(0, decisions, chunk):
        rows = min(chunk, decisions - first)
        await pool.execute(
            SEED, variants, VARIANTS, PLACEHOLDER, first, decisions, now, rows, timeout=3600
        )
        done = first + rows
        elapsed = time.perf_counter() - started
        print(f"  seeded {done:,} in {elapsed:.0f} s", flush=True)
    await pool.execute("ANALYZE decisions")
    return time.perf_counter() - started


async def timed(work: Callable[[], Awaitable[Any]], rounds: int) -> list[float]:
    """Milliseconds each of ``rounds`` runs of ``work`` took, one after another."""
    taken = []
    for _ in range(rounds):
        started = time.perf_counter()
        await work()
        taken.append((time.perf_counter() - started) * 1000)
    return taken


def summary(taken: list[float]) -> dict[str, float]:
    ordered = sorted(taken)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {"median_ms": round(statistics.median(ordered), 1), "p95_ms": round(p95, 1)}


async def write_signals(redis: aioredis.Redis, prefix: str, registry: Registry) -> None:
    """An hour of ingest lag per feature, as ingest workers would have flushed it."""
    signals = IngestSignals(redis, prefix, registry.features, registry.file.streams)
    now_ms = int(time.time() * 1000)
    rng = random.Random(7)
    for minute in range(60):
        at = now_ms - minute * 60_000
        for name in FEATURES:
            signals.wrote(name, [rng.lognormvariate(5, 1) for _ in range(50)], at, at)
        await signals.flush()
    signals.seen("updates", now_ms)
    signals.consumer_lag("features.customer", 0, 3, now_ms)
    await signals.flush()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = args.database
    url = await fresh_database(name)
    pool = await asyncpg.create_pool(url, min_size=4, max_size=8)
    redis = aioredis.Redis.from_url(REDIS)
    prefix = f"sgbench{uuid.uuid4().hex[:8]}"
    results: dict[str, Any] = {"decisions": args.decisions, "resolution_s": args.resolution}
    try:
        now = datetime.now(UTC)
        results["seed_s"] = round(await seed(pool, args.decisions, args.chunk, now), 1)

        rollup = FreshnessRollup(pool, args.resolution)
        started = time.perf_counter()
        rolled = await rollup.drain()
        drained_s = time.perf_counter() - started
        results["rolled_up"] = rolled
        results["rollup_s"] = round(drained_s, 1)
        results["rollup_per_s"] = round(rolled / drained_s)
        # Autovacuum analyses the rollup's tables as they fill; here they filled at once.
        await pool.execute("VACUUM ANALYZE freshness_queue, freshness_serves, freshness_staleness")
        results["serves_rows"] = await pool.fetchval("SELECT count(*) FROM freshness_serves")
        results["staleness_rows"] = await pool.fetchval("SELECT count(*) FROM freshness_staleness")
        print(
            f"rollup: {rolled:,} decisions in {drained_s:.1f} s,"
            f" {results['rollup_per_s']:,} decisions/s; rows: {results['serves_rows']:,} serves,"
            f" {results['staleness_rows']:,} staleness",
            flush=True,
        )

        registry = parse_registry(registry_text().encode())
        await write_signals(redis, prefix, registry)
        reporter = FreshnessReporter(registry, pool, redis, prefix, args.resolution, cache_s=0)
        report = await reporter.report()
        assert not report.signals_unavailable, report.signals_unavailable
        assert sum(f.windows["1d"].served for f in report.features) > 0
        windows = list(WINDOWS_S.values())
        at = datetime.now(UTC)
        parts: dict[str, Callable[[], Awaitable[Any]]] = {
            "report": reporter.report,
            "serve_windows": lambda: serve_windows(pool, args.resolution, windows, at, FEATURES),
            "staleness_windows": lambda: staleness_windows(
                pool, args.resolution, windows, at, FEATURES
            ),
            "backlog": rollup.backlog,
            "read_signals": lambda: read_signals(
                redis, prefix, FEATURES, registry.file.streams, at
            ),
        }
        timings = {}
        for part, work in parts.items():
            await work()
            timings[part] = summary(await timed(work, args.rounds))
            print(f"{part}: {timings[part]} over {args.rounds} rounds", flush=True)
        results["timings"] = timings

        direct_at = datetime.now(UTC)
        rows: list[asyncpg.Record] = []

        async def direct() -> None:
            nonlocal rows
            rows = await pool.fetch(DIRECT, direct_at, windows, max(windows), timeout=3600)

        results["direct"] = summary(await timed(direct, args.direct_rounds))
        print(f"straight from the records: {results['direct']}", flush=True)
        rolled_windows = await serve_windows(pool, args.resolution, windows, direct_at, FEATURES)
        # A window's first slot counts from its start: the two may differ by the
        # decisions of one slot at most.
        per_slot = args.decisions * args.resolution / 86_400
        worst = max(
            (abs(rolled_windows[r["window_s"]][r["feature"]].served - r["served"]) for r in rows),
            default=0,
        )
        results["largest_count_difference"] = worst
        results["decisions_per_slot"] = round(per_slot, 1)
        print(
            f"served counts, rollup against records: at most {worst} apart"
            f" (a slot holds {per_slot:.1f} decisions)"
        )
    finally:
        await redis.delete(*[k async for k in redis.scan_iter(match=f"{prefix}:*", count=500)])
        await redis.aclose()
        await pool.close()
        if not args.keep:
            await drop_database(name)
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=20, help="reports timed")
    parser.add_argument("--direct-rounds", type=int, default=1, help="direct queries timed")
    parser.add_argument("--resolution", type=int, default=10, help="the rollup's fine grain")
    parser.add_argument("--database", default="scoregate_freshness_report_bench")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse_args())), indent=2))
