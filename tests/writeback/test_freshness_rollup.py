"""The served-staleness rollup against a real PostgreSQL: decisions committed by the
audit store are counted once per stored feature, in their slots, at both grains."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from contracts.features import FeatureValue
from gateway.freshness.histogram import bucket_of, quantiles
from tests.support.records import commit, make_record
from writeback.audit_store import AuditStore
from writeback.config import WritebackConfig
from writeback.freshness import FreshnessRollup, ServeCounts, serve_windows, staleness_windows

pytestmark = pytest.mark.services

SLA_MS = 60_000


@pytest.fixture
def config(database_url: str, topic: str) -> WritebackConfig:
    return WritebackConfig(
        database_url=database_url,
        kafka_bootstrap="127.0.0.1:9",
        topic=topic,
        freshness_resolution_s=1,
    )


def served(status: str, staleness_ms: int | None) -> FeatureValue:
    return FeatureValue(
        value=1.0,
        status=status,  # type: ignore[arg-type]
        source="online_store" if status in ("fresh", "stale") else status,
        staleness_ms=staleness_ms,
        max_staleness_ms=SLA_MS,
    )


async def commit_serves(
    store: AuditStore, serves: list[FeatureValue], decided_at: datetime | None = None
) -> None:
    for n, value in enumerate(serves):
        base = make_record(customer=f"c-{n}")
        record = msgspec.structs.replace(
            base,
            features={
                **base.features,
                "score_feature": value,
                "amount": FeatureValue(value=5.0, status="request", source="request"),
            },
            **({"decided_at": decided_at} if decided_at else {}),
        )
        await commit(store, record)


async def test_serves_are_counted_per_feature_and_status(
    store: AuditStore, pool: asyncpg.Pool, config: WritebackConfig
) -> None:
    serves = [
        served("fresh", 1_000),
        served("fresh", 59_000),
        served("fallback", 20),
        served("stale", 90_000),
        served("default", None),
        served("default", None),
    ]
    await commit_serves(store, serves)
    rollup = FreshnessRollup(pool, config.freshness_resolution_s)
    assert await rollup.drain() == len(serves)
    assert await rollup.backlog() == 0

    now = datetime.now(UTC) + timedelta(seconds=1)
    windows = await serve_windows(pool, 1, [300, 7 * 24 * 3600], now)
    for window in (300, 7 * 24 * 3600):
        assert windows[window]["score_feature"] == ServeCounts(
            served=6, within_sla=3, fresh=2, fallback=1, stale=1, defaulted=2, missing=0
        )
        assert "amount" not in windows[window]

    buckets = await staleness_windows(pool, 1, [300], now, ["score_feature"])
    counts = buckets[300]["score_feature"]
    assert counts == {
        bucket_of(1_000): 1,
        bucket_of(59_000): 1,
        bucket_of(20): 1,
        bucket_of(90_000): 1,
    }
    p50, p99 = quantiles(counts, [0.5, 0.99])
    assert p50 is not None and 900 < p50 < 1_100
    assert p99 is not None and 85_000 < p99 < 95_000

    # Nothing is counted twice: a second drain finds nothing.
    assert await rollup.drain() == 0
    again = await serve_windows(pool, 1, [300], now, ["score_feature"])
    assert again[300]["score_feature"].served == 6


async def test_windows_count_only_their_slots(
    store: AuditStore, pool: asyncpg.Pool, config: WritebackConfig
) -> None:
    now = datetime.now(UTC)
    await commit_serves(store, [served("fresh", 10)] * 2, decided_at=now - timedelta(hours=2))
    await commit_serves(store, [served("stale", 120_000)] * 3, decided_at=now)
    await FreshnessRollup(pool, 1).drain()

    windows = await serve_windows(pool, 1, [300, 3 * 3600], now + timedelta(seconds=1))
    assert windows[300]["score_feature"].served == 3
    assert windows[300]["score_feature"].within_sla == 0
    assert windows[3 * 3600]["score_feature"].served == 5
    assert windows[3 * 3600]["score_feature"].within_sla == 2


async def test_one_rollup_at_a_time_counts_each_decision_once(
    store: AuditStore, pool: asyncpg.Pool, config: WritebackConfig
) -> None:
    await commit_serves(store, [served("fresh", n) for n in range(40)])
    rollups = [FreshnessRollup(pool, 1, batch=7) for _ in range(3)]
    while await rollups[0].backlog():
        await asyncio.gather(*(r.roll_once() for r in rollups))
    windows = await serve_windows(pool, 1, [300], datetime.now(UTC) + timedelta(seconds=1))
    assert windows[300]["score_feature"].served == 40
    rows = await pool.fetchval(
        "SELECT sum(n) FROM freshness_staleness WHERE feature = 'score_feature' AND grain_s = 60"
    )
    assert rows == 40


async def test_pruning_drops_slots_past_their_horizon(
    store: AuditStore, pool: asyncpg.Pool, config: WritebackConfig
) -> None:
    now = datetime.now(UTC)
    await commit_serves(store, [served("fresh", 5)], decided_at=now - timedelta(days=2))
    await commit_serves(store, [served("fresh", 5)], decided_at=now - timedelta(days=40))
    rollup = FreshnessRollup(pool, 1)
    await rollup.drain()
    await rollup.prune()
    grains = await pool.fetch(
        "SELECT grain_s, slot_start FROM freshness_serves WHERE feature = 'score_feature'"
    )
    # The 2-day-old serve keeps its hourly slot only; the 40-day-old one is gone.
    assert [(g["grain_s"], g["slot_start"] > now - timedelta(days=3)) for g in grains] == [
        (3600, True)
    ]
