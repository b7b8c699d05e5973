"""Windows read from the served-staleness rollup: fine slots up to a window's first whole
hour and hourly slots after it count exactly what the fine slots alone count, in any
session time zone, against a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from contracts.features import FeatureValue
from tests.support.records import commit, make_record
from writeback.audit_store import AuditStore
from writeback.config import WritebackConfig
from writeback.freshness import FreshnessRollup, serve_windows, staleness_windows

pytestmark = pytest.mark.services

SLA_MS = 60_000
# Half a minute and half a second into a minute: a window's first slot (a second, or a
# minute for staleness) starts within it, so what it counts of its first half minute
# depends on the grain; no decision below is made in a window's first half minute.
_HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
NOW = _HOUR - timedelta(hours=1) + timedelta(minutes=30, seconds=30.5)
# Seconds before NOW each decision was made: inside and outside every window, on both
# sides of hour boundaries, and just inside and outside the day.
AGES_S = [5, 100, 250, 310, 1_500, 1_750, 1_810, 1_850, 3_550, 3_610, 7_000, 7_210, 9_000]
AGES_S += [21_500, 21_700, 40_000, 86_350, 86_430]
WINDOWS_S = [300, 1_800, 3_600, 7_200, 6 * 3_600, 86_400]


@pytest.fixture
def config(database_url: str, topic: str) -> WritebackConfig:
    return WritebackConfig(
        database_url=database_url,
        kafka_bootstrap="127.0.0.1:9",
        topic=topic,
        freshness_resolution_s=1,
    )


async def commit_at(store: AuditStore, age_s: int) -> None:
    base = make_record(customer=f"c-{age_s}")
    record = msgspec.structs.replace(
        base,
        features={
            "score_feature": FeatureValue(
                value=1.0,
                status="fresh" if age_s % 2 else "stale",
                source="online_store",
                staleness_ms=age_s * 10,
                max_staleness_ms=SLA_MS,
            )
        },
        decided_at=NOW - timedelta(seconds=age_s),
    )
    await commit(store, record)


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Kolkata"])
async def test_windows_count_the_decisions_made_in_them(
    store: AuditStore, config: WritebackConfig, timezone: str
) -> None:
    for age in AGES_S:
        await commit_at(store, age)
    zoned = await asyncpg.create_pool(
        config.database_url, min_size=1, max_size=2, server_settings={"timezone": timezone}
    )
    try:
        await FreshnessRollup(zoned, 1).drain()
        serves = await serve_windows(zoned, 1, WINDOWS_S, NOW, ["score_feature"])
        buckets = await staleness_windows(zoned, 1, WINDOWS_S, NOW, ["score_feature"])
    finally:
        await zoned.close()
    for window in WINDOWS_S:
        inside = [age for age in AGES_S if age < window]
        counts = serves[window]["score_feature"]
        assert counts.served == len(inside), window
        assert counts.fresh == len([age for age in inside if age % 2]), window
        assert counts.stale == len([age for age in inside if not age % 2]), window
        assert sum(buckets[window]["score_feature"].values()) == len(inside), window
