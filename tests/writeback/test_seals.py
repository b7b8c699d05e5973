"""The hash chain against a real PostgreSQL: sealing and verifying many records, in
batches, without holding up the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

import asyncpg
import msgspec
import pytest

from contracts.features import FeatureValue
from tests.support.records import make_record
from writeback.config import WritebackConfig
from writeback.seals import DecisionSealer, verify

pytestmark = pytest.mark.services

T = TypeVar("T")

PLACEHOLDER = "00000000-0000-4000-8000-000000000000"
SEED = """
INSERT INTO decisions (decision_id, caller, request_id, model_name, model_version,
                       subject_entity, subject_id, decided_at, committed_at, record)
SELECT id, 'seal-test', id::text, 'credit', '3', 'customer', 'c-1', now(),
       now() + n * interval '1 microsecond', replace($1, $2, id::text)::json
FROM (SELECT n, gen_random_uuid() AS id FROM generate_series(1, $3) AS n) AS rows
"""


@pytest.fixture
def config(database_url: str, topic: str) -> WritebackConfig:
    return WritebackConfig(database_url=database_url, kafka_bootstrap="127.0.0.1:9", topic=topic)


def record_text() -> str:
    """A decision record's JSON about the size the gateway writes (some 5 kB: a dozen
    features with freshness and lineage), its id a placeholder."""
    now = datetime.now(UTC)
    base = make_record(decision_id=PLACEHOLDER)
    features = {
        f"feature_{n}": FeatureValue(
            value=n * 1.5,
            status="fresh",
            source="online_store",
            event_time=now - timedelta(seconds=n),
            ingested_at=now,
            staleness_ms=n * 1000,
            max_staleness_ms=60000,
            lineage_id=f"lin_{uuid.uuid4().hex[:24]}",
            schema_version=1,
        )
        for n in range(12)
    }
    lineage = {name: next(iter(base.lineage.values())) for name in features}
    record = msgspec.structs.replace(base, features={**base.features, **features}, lineage=lineage)
    return msgspec.json.encode(record).decode()


async def seed(pool: asyncpg.Pool, rows: int) -> None:
    """``rows`` decisions, queued for sealing by the insert trigger."""
    await pool.execute(SEED, record_text(), PLACEHOLDER, rows)


async def seal_all(pool: asyncpg.Pool) -> None:
    sealer = DecisionSealer(pool, batch=5000)
    while await sealer.seal_once():
        pass


class LoopWatch:
    """Turns of a ticker on the event loop, and the most CPU time the loop's thread
    spent between two of them.

    CPU time of the loop's own thread, not wall time: while the loop runs one piece of
    work and nothing else, its thread's CPU clock advances by that work's cost, whereas
    the wall clock also counts the time the machine's scheduler gave the core to other
    processes, which on a shared machine says nothing about this code.
    """

    def __init__(self) -> None:
        self.longest_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.thread_time()
        while True:
            await asyncio.sleep(0.001)
            now = time.thread_time()
            self.longest_s = max(self.longest_s, now - last)
            last = now

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        # A full collection of the test process's heap is a stall of the interpreter's,
        # not of the code under test.
        gc.collect()
        gc.disable()
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0.002)
        try:
            yield
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            gc.enable()


@dataclass
class Watched(Generic[T]):
    """What some work returned, how long it took, and the loop's longest stretch."""

    result: T
    wall_s: float
    cpu_s: float
    """CPU time of the whole process (every thread) over the work."""
    longest_s: float


async def watched(work: Awaitable[T]) -> Watched[T]:
    """Run ``work`` with a :class:`LoopWatch` on the loop."""
    watch = LoopWatch()
    async with watch.watching():
        wall, cpu = time.perf_counter(), time.process_time()
        result = await work
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Watched(result, wall, cpu, watch.longest_s)


async def test_a_long_verify_leaves_the_event_loop_free(pool: asyncpg.Pool) -> None:
    await seed(pool, 20_000)
    await seal_all(pool)

    run = await watched(verify(pool))

    assert run.result.ok is True
    assert run.result.checked == 20_000
    # Hashing on the loop held it for a whole batch at a time, over 3% of the walk here;
    # with the database checking, the loop does next to nothing (some 0.2%).
    held = run.longest_s / run.wall_s
    assert held < 0.01, f"the loop was held for {held:.1%} of the verify"


async def test_sealing_a_large_batch_leaves_the_event_loop_free(pool: asyncpg.Pool) -> None:
    await seed(pool, 5000)
    sealer = DecisionSealer(pool, batch=5000)

    run = await watched(sealer.seal_once())

    assert run.result == 5000
    assert (await verify(pool)).checked == 5000
    # Hashing and encoding the batch on the loop held it for some 30% of the CPU the
    # pass cost; what is left is decoding rows as they arrive (some 2%).
    held = run.longest_s / run.cpu_s
    assert held < 0.08, f"the loop was held for {held:.1%} of the pass"


async def test_verify_walks_batch_by_batch_and_names_the_first_bad_record(
    pool: asyncpg.Pool,
) -> None:
    await seed(pool, 50)
    await seal_all(pool)
    order = [
        str(row["decision_id"])
        for row in await pool.fetch("SELECT decision_id FROM decision_seals ORDER BY seq")
    ]

    report = await verify(pool, batch=7)
    assert (report.ok, report.checked, report.unsealed) == (True, 50, 0)
    head = await pool.fetchval("SELECT hash FROM decision_seals ORDER BY seq DESC LIMIT 1")
    assert report.chain_head == bytes(head).hex()

    # The 30th record, in the fifth batch of seven.
    await pool.execute(
        "UPDATE decisions SET record = replace(record::text, '\"approve\"', '\"decline\"')::json"
        " WHERE decision_id = $1::uuid",
        order[29],
    )
    report = await verify(pool, batch=7)
    assert report.ok is False
    assert report.first_mismatch == order[29]
    assert report.reason == "record does not match its seal"
    assert report.checked == 29

    since = await pool.fetchval(
        "SELECT committed_at FROM decision_seals WHERE decision_id = $1::uuid", order[40]
    )
    # From a later point on, the edited record is not walked.
    later = await verify(pool, since, batch=7)
    assert (later.ok, later.checked) == (True, 10)


async def test_a_paced_verify_rests_after_each_batch_in_proportion_to_it(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(pool, 30)
    await seal_all(pool)
    rests: list[float] = []

    async def noted(seconds: float) -> None:
        rests.append(seconds)

    monkeypatch.setattr("writeback.seals._rest", noted)
    full_speed = await verify(pool, batch=7)
    assert rests == []
    paced = await verify(pool, batch=7, pace=3.0)
    assert (paced.ok, paced.checked) == (full_speed.ok, full_speed.checked) == (True, 30)
    # 30 seals in batches of 7: five batches, each followed by its rest.
    assert len(rests) == 5
    assert all(rest > 0 for rest in rests)
