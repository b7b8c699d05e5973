"""Reconciliation against real services: Redis, PostgreSQL and the sample sources over HTTP.

The sample sources run in a child process that records when each call arrived, so the
budget of calls per second is checked where the source sees the calls.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from string import Template

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.deadline import Deadline
from gateway.features.online_store import OnlineStore, StoredValue, lineage_id_for, to_millis
from gateway.features.sources import SourceClient
from gateway.freshness.reconciliation import EntitySampler, Reconciler
from gateway.registry import Registry, parse_registry
from scoregate_dev.broker import free_port
from scoregate_dev.sample_sources import txn_stats_record
from tests.support.sample import SAMPLE_REGISTRY, spawn
from writeback import ReconciliationStore

pytestmark = pytest.mark.services

FEATURE = "txn_count_30m"
TXN_PATH = "/txn/customers/{}/txn-stats"


@dataclass
class TimedSources:
    url: str
    http: aiohttp.ClientSession

    async def arrivals(self, path_part: str = "/txn/") -> list[float]:
        async with self.http.get(f"{self.url}/_arrivals") as response:
            rows = await response.json()
        return [at for at, path in rows if path_part in path]

    async def reset(self) -> None:
        async with self.http.delete(f"{self.url}/_arrivals") as response:
            assert response.status == 200
        async with self.http.delete(f"{self.url}/_faults") as response:
            assert response.status < 300

    async def fault(self, source: str, mode: str, **extra: int) -> None:
        body = {"mode": mode, **extra}
        async with self.http.put(f"{self.url}/_faults/{source}", json=body) as response:
            assert response.status == 200, await response.text()


@pytest.fixture(scope="module")
async def timed_server() -> AsyncIterator[TimedSources]:
    port = free_port()
    process = await spawn("tests.support.timed_sources", port)
    async with aiohttp.ClientSession() as http:
        yield TimedSources(f"http://127.0.0.1:{port}", http)
    process.terminate()
    await process.wait()


@pytest.fixture
async def timed(timed_server: TimedSources) -> AsyncIterator[TimedSources]:
    await timed_server.reset()
    yield timed_server
    await timed_server.reset()


def registry_for(url: str, *edits: tuple[str, str]) -> Registry:
    text = Template(SAMPLE_REGISTRY.read_text()).substitute(
        sources_url=url, model_url="http://127.0.0.1:9"
    )
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return parse_registry(text.encode())


def budget(calls_per_s: int, timeout_ms: int = 150) -> list[tuple[str, str]]:
    """The txn_stats source with a reconciliation budget (and a timeout) of its own."""
    return [
        (
            'owner = "payments-analytics"\ntimeout_ms = 150',
            f'owner = "payments-analytics"\ntimeout_ms = {timeout_ms}\n'
            f"reconcile_calls_per_s = {calls_per_s}",
        )
    ]


@dataclass
class Parts:
    registry: Registry
    store: OnlineStore
    reconciler: Reconciler
    runs: ReconciliationStore
    sources: dict[str, SourceClient]


class Harness:
    """Builds reconcilers (one per simulated process) on one test's Redis and database."""

    def __init__(self, redis_url: str, prefix: str, database_url: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.database_url = database_url
        self._close: list[object] = []

    async def parts(self, registry: Registry) -> Parts:
        store = OnlineStore.from_url(
            self.redis_url, self.prefix, registry.file.online_store, max_connections=4
        )
        session = aiohttp.ClientSession()
        sources = {name: SourceClient(s, session) for name, s in registry.sources.items()}
        pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=4)
        runs = ReconciliationStore(pool, self.database_url)
        sampler = EntitySampler(aioredis.Redis.from_url(self.redis_url), store)
        reconciler = Reconciler(registry, store, sources, sampler, runs)
        self._close += [store, session, pool, sampler]
        return Parts(registry, store, reconciler, runs, sources)

    async def close(self) -> None:
        for part in self._close:
            await part.close()  # type: ignore[attr-defined]


@pytest.fixture
async def harness(redis_url: str, redis_prefix: str, database_url: str) -> AsyncIterator[Harness]:
    made = Harness(redis_url, redis_prefix, database_url)
    yield made
    await made.close()


def value(name: str, value: object, event_time: datetime, ref: str = "seed") -> StoredValue:
    millis = to_millis(event_time)
    return StoredValue(
        value=value,  # type: ignore[arg-type]
        event_time_ms=millis,
        ingested_at_ms=to_millis(datetime.now(UTC)),
        lineage_id=lineage_id_for("test", ref, name, millis),
        kind="push",
        source_system="test",
        source_ref=ref,
        schema_version=1,
        transform=None,
    )


async def put(store: OnlineStore, customer: str, when: datetime, **features: object) -> None:
    values = {
        name: value(name, v, when, f"{customer}:{when.isoformat()}") for name, v in features.items()
    }
    await store.write("customer", customer, to_millis(when), values)


async def stored(store: OnlineStore, customer: str) -> StoredValue | None:
    [row] = await store.read([("customer", customer, (FEATURE,))], Deadline(1.0))
    return row.get(FEATURE)


def truth(customer: str) -> int:
    return txn_stats_record(customer, datetime.now(UTC)).txn_count_30m


async def test_finds_seeded_mismatches_and_repairs_without_rolling_back_newer_values(
    timed: TimedSources, harness: Harness, database_url: str
) -> None:
    parts = await harness.parts(registry_for(timed.url, *budget(50)))
    store = parts.store
    old = datetime.now(UTC) - timedelta(minutes=10)
    future = datetime.now(UTC) + timedelta(hours=1)
    await put(store, "c-agree", old, txn_count_30m=truth("c-agree"))
    await put(store, "c-wrong", old, txn_count_30m=truth("c-wrong") + 100)
    await put(store, "c-newer", future, txn_count_30m=truth("c-newer") + 7)
    await put(store, "c-partial", old, txn_amount_sum_24h=1.5)  # no txn_count_30m stored
    await put(store, "unknown-gone", old, txn_count_30m=3)  # the source answers 404
    newer_before = await stored(store, "c-newer")

    run = await parts.reconciler.run(FEATURE, sample=100, repair=True)

    assert run is not None
    assert run.stopped_reason is None
    assert (run.sampled, run.checked, run.errors, run.source_calls) == (5, 5, 0, 5)
    assert (run.matched, run.mismatched, run.missing_in_store, run.missing_at_source) == (
        1,
        2,
        1,
        1,
    )
    assert run.newer_at_source == 2  # c-agree and c-wrong: stored ten minutes ago
    by_id = {f.entity_id: f for f in run.findings}
    assert set(by_id) == {"c-agree", "c-wrong", "c-newer", "c-partial", "unknown-gone"}
    assert by_id["c-agree"].kind == "newer_at_source"
    assert by_id["c-wrong"].kind == "mismatch"
    assert by_id["c-wrong"].repair_outcome == "written" and by_id["c-wrong"].repaired
    assert by_id["c-newer"].kind == "mismatch"
    assert by_id["c-newer"].repair_outcome == "older" and not by_id["c-newer"].repaired
    assert by_id["c-partial"].kind == "missing_in_store" and by_id["c-partial"].repaired
    assert by_id["unknown-gone"].kind == "missing_at_source"
    assert run.repaired == 2

    repaired = await stored(store, "c-wrong")
    assert repaired is not None
    assert repaired.value == truth("c-wrong")
    assert repaired.kind == "reconcile"
    assert repaired.lineage("customer", "c-wrong").kind == "reconcile"
    assert repaired.source_system == "source:txn_stats"
    assert repaired.source_ref.startswith("txn_stats:c-wrong:")
    assert await stored(store, "c-newer") == newer_before  # the compare-and-set refused
    filled = await stored(store, "c-partial")
    assert filled is not None and filled.value == truth("c-partial")
    agreed = await stored(store, "c-agree")
    assert agreed is not None and agreed.kind == "push"  # agreeing values are not written

    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM reconciliation_runs")
        kinds = dict(
            await conn.fetch("SELECT entity_id, kind FROM reconciliation_findings ORDER BY 1")
        )
    finally:
        await conn.close()
    assert str(row["run_id"]) == run.run_id and row["mismatched"] == 2 and row["repaired"] == 2
    assert kinds["c-wrong"] == "mismatch" and len(kinds) == 5


async def test_without_repair_nothing_is_written(timed: TimedSources, harness: Harness) -> None:
    parts = await harness.parts(registry_for(timed.url, *budget(50)))
    old = datetime.now(UTC) - timedelta(minutes=10)
    await put(parts.store, "c-wrong", old, txn_count_30m=truth("c-wrong") + 1)
    before = await stored(parts.store, "c-wrong")
    run = await parts.reconciler.run(FEATURE, sample=10)
    assert run is not None and run.mismatched == 1 and run.repaired == 0
    assert await stored(parts.store, "c-wrong") == before


async def test_a_value_ingested_between_the_read_and_the_repair_wins(
    timed: TimedSources, harness: Harness
) -> None:
    # An entity whose source record is a few seconds old (the sample source says so per
    # entity): a value ingested now is newer than what the source will answer.
    now = datetime.now(UTC)
    customer = next(
        f"c-race-{i}"
        for i in range(200)
        if now - datetime.fromisoformat(txn_stats_record(f"c-race-{i}", now).event_time)
        > timedelta(seconds=3.5)
    )
    parts = await harness.parts(registry_for(timed.url, *budget(50, timeout_ms=10_000)))
    await put(parts.store, customer, now - timedelta(minutes=5), txn_count_30m=truth(customer) + 1)
    await timed.fault("txn_stats", "latency", latency_ms=1500)

    task = asyncio.create_task(
        parts.reconciler.run(FEATURE, sample=0, entity_ids=[customer], repair=True)
    )
    async with asyncio.timeout(10):
        while not await timed.arrivals():
            await asyncio.sleep(0.02)
    # The run has read the stored value and waits for the source: an ingest comes in.
    ingested = datetime.now(UTC)
    await put(parts.store, customer, ingested, txn_count_30m=truth(customer) + 2)
    run = await task

    assert run is not None
    [finding] = run.findings
    assert finding.kind == "mismatch"
    assert finding.stored_value == truth(customer) + 1  # what the run read
    assert finding.source_event_time is not None and finding.source_event_time < ingested
    assert finding.repair_outcome == "older" and not finding.repaired
    kept = await stored(parts.store, customer)
    assert kept is not None and kept.value == truth(customer) + 2
    assert kept.event_time_ms == to_millis(ingested)


def most_in_one_second(arrivals: list[float]) -> int:
    arrivals = sorted(arrivals)
    return max(
        sum(1 for later in arrivals[i:] if later < start + 1.0) for i, start in enumerate(arrivals)
    )


async def test_never_sends_a_source_more_than_its_budget(
    timed: TimedSources, harness: Harness
) -> None:
    parts = await harness.parts(registry_for(timed.url, *budget(10)))
    old = datetime.now(UTC) - timedelta(minutes=10)
    customers = [f"c-rate-{i}" for i in range(20)]
    for customer in customers:
        await put(parts.store, customer, old, txn_count_30m=truth(customer))

    run = await parts.reconciler.run(FEATURE, sample=20)

    assert run is not None and run.checked == 20 and run.source_calls == 20
    arrivals = await timed.arrivals()
    assert len(arrivals) == 20
    assert most_in_one_second(arrivals) <= 10
    # Twenty calls at ten a second: the last cannot come before 1.9 s after the first.
    assert max(arrivals) - min(arrivals) >= 1.9
    took = (run.finished_at - run.started_at).total_seconds()
    assert took >= 1.9
    spanned = max(arrivals) - min(arrivals)
    print(f"20 calls at 10/s: the run took {took:.2f} s, the arrivals spanned {spanned:.2f} s")


async def test_runs_in_two_processes_take_turns_so_the_budget_holds_for_both(
    timed: TimedSources, harness: Harness
) -> None:
    registry = registry_for(timed.url, *budget(10))
    first, second = await harness.parts(registry), await harness.parts(registry)
    old = datetime.now(UTC) - timedelta(minutes=10)
    for i in range(12):
        await put(first.store, f"c-turn-{i}", old, txn_count_30m=truth(f"c-turn-{i}"))

    running = asyncio.create_task(first.reconciler.run(FEATURE, sample=12))
    async with asyncio.timeout(10):
        while not await timed.arrivals():
            await asyncio.sleep(0.02)
    # Another process's job finds the source taken and leaves it this round...
    assert await second.reconciler.run(FEATURE, sample=12, wait=False) is None
    # ...and a command run waits for the first to end (its budget is its own process's).
    waited = await second.reconciler.run(FEATURE, sample=12)
    ran = await running
    assert ran is not None and waited is not None
    # It starts once the first has let go of the source: a second after its last call.
    assert waited.started_at >= ran.finished_at
    arrivals = await timed.arrivals()
    assert len(arrivals) == 24
    assert most_in_one_second(arrivals) <= 10


async def test_stops_when_the_sources_breaker_opens(timed: TimedSources, harness: Harness) -> None:
    parts = await harness.parts(registry_for(timed.url, *budget(50)))
    old = datetime.now(UTC) - timedelta(minutes=10)
    for i in range(20):
        await put(parts.store, f"c-down-{i}", old, txn_count_30m=1)
    await timed.fault("txn_stats", "error", status=503)

    run = await parts.reconciler.run(FEATURE, sample=20, repair=True)

    assert run is not None
    assert run.stopped_reason == "breaker_open"
    fail_max = parts.registry.sources["txn_stats"].breaker.fail_max
    assert (run.errors, run.checked, run.source_calls) == (fail_max, 0, fail_max)
    assert len(await timed.arrivals()) == fail_max
    assert parts.sources["txn_stats"].breaker.state == "open"

    # While it stays open, a run sends nothing at all.
    again = await parts.reconciler.run(FEATURE, sample=20)
    assert again is not None and again.stopped_reason == "breaker_open"
    assert again.source_calls == 0 and len(await timed.arrivals()) == fail_max


async def test_the_latest_run_per_feature_is_read_back(
    timed: TimedSources, harness: Harness
) -> None:
    parts = await harness.parts(registry_for(timed.url, *budget(50)))
    old = datetime.now(UTC) - timedelta(minutes=10)
    await put(parts.store, "c-one", old, txn_count_30m=truth("c-one") + 3, txn_amount_sum_24h=1.0)
    await parts.reconciler.run(FEATURE, sample=10)
    latest = await parts.reconciler.run(FEATURE, sample=10)
    other = await parts.reconciler.run("txn_amount_sum_24h", sample=10)
    assert latest is not None and other is not None
    runs = await parts.runs.latest([FEATURE, "txn_amount_sum_24h", "kyc_level"])
    assert [r.run_id for r in runs] == [latest.run_id, other.run_id]
    [finding] = runs[0].findings
    assert finding.entity_id == "c-one" and finding.kind == "mismatch"
    assert finding.stored_value == truth("c-one") + 3 and finding.source_value == truth("c-one")
    assert uuid.UUID(runs[0].run_id)
