"""Retention and partition upkeep against a real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
import msgspec
import pytest

from scoregate_dev.broker import LocalBroker
from tests.support.records import commit, make_record
from writeback.audit_store import AuditStore
from writeback.config import WritebackConfig
from writeback.kafka import KafkaPublisher
from writeback.relay import OutboxRelay
from writeback.retention import Retention, add_months, month_start

pytestmark = pytest.mark.services


@pytest.fixture
def config(database_url: str, broker: LocalBroker, topic: str) -> WritebackConfig:
    return WritebackConfig(
        database_url=database_url,
        kafka_bootstrap=broker.bootstrap,
        topic=topic,
        decision_retention_days=190,
        outbox_retention_hours=24,
        partitions_ahead_months=5,
    )


async def partition_of(pool: asyncpg.Pool, decision_id: str) -> str:
    name: str = await pool.fetchval(
        "SELECT tableoid::regclass::text FROM decisions WHERE decision_id = $1",
        uuid.UUID(decision_id),
    )
    return name


def test_month_arithmetic() -> None:
    assert month_start(datetime(2026, 11, 30, 23, 59, tzinfo=UTC)) == date(2026, 11, 1)
    assert add_months(date(2026, 11, 1), 2) == date(2027, 1, 1)
    assert add_months(date(2026, 1, 1), -1) == date(2025, 12, 1)


async def test_partitions_are_created_ahead_once(
    pool: asyncpg.Pool, config: WritebackConfig
) -> None:
    retention = Retention(pool, config)
    now = datetime.now(UTC)

    report = await retention.run_once(now)

    # The migration made three months ahead; five are asked for.
    months = [add_months(month_start(now), n) for n in (4, 5)]
    expected = [
        f"{table}_p{m:%Y%m}" for m in months for table in ("decisions", "writeback_timeline")
    ]
    assert report.partitions_created == expected
    assert not report.partitions_dropped
    assert (await retention.run_once(now)).partitions_created == []


async def test_whole_months_past_retention_are_dropped(
    store: AuditStore, pool: asyncpg.Pool, config: WritebackConfig
) -> None:
    record = make_record("c-1")
    await commit(store, record)
    retention = Retention(pool, config)
    now = datetime.now(UTC)
    this_month = f"decisions_p{month_start(now):%Y%m}"
    assert await partition_of(pool, record.decision_id) == this_month

    # Within retention, even at its edge: nothing goes.
    report = await retention.run_once(now + timedelta(days=config.decision_retention_days - 1))
    assert this_month not in report.partitions_dropped
    assert await store.get(record.decision_id) is not None

    report = await retention.run_once(now + timedelta(days=config.decision_retention_days + 32))

    assert this_month in report.partitions_dropped
    assert f"writeback_timeline_p{month_start(now):%Y%m}" in report.partitions_dropped
    assert report.rows_purged["decision_requests"] == 1
    assert await store.get(record.decision_id) is None
    assert await pool.fetchval("SELECT count(*) FROM decision_requests") == 0


async def test_rows_without_a_partition_land_in_default_and_move_out(
    pool: asyncpg.Pool, config: WritebackConfig
) -> None:
    later = datetime.now(UTC) + timedelta(days=800)
    decision_id = str(uuid.uuid4())
    await pool.execute(
        """
        INSERT INTO decisions (decision_id, caller, request_id, model_name, model_version,
                               subject_entity, subject_id, decided_at, committed_at, record)
        VALUES ($1, 'a', 'r', 'm', '1', 'customer', 'c-1', $2, $2, '{}')
        """,
        uuid.UUID(decision_id),
        later,
    )
    assert await partition_of(pool, decision_id) == "decisions_default"

    report = await Retention(pool, config).run_once(later)

    assert f"decisions_p{month_start(later):%Y%m}" in report.partitions_created
    assert await partition_of(pool, decision_id) == f"decisions_p{month_start(later):%Y%m}"


async def test_delivered_outbox_rows_are_purged_and_their_history_stays(
    store: AuditStore, pool: asyncpg.Pool, config: WritebackConfig
) -> None:
    delivered = make_record("c-1")
    await commit(store, delivered)
    publisher = KafkaPublisher(config)
    try:
        await OutboxRelay(pool, publisher, config).run_once()
    finally:
        await publisher.stop()
    waiting = make_record("c-2")
    await commit(store, waiting)
    before = await store.get(delivered.decision_id)
    assert before is not None

    report = await Retention(pool, config).run_once(datetime.now(UTC) + timedelta(hours=25))

    assert report.rows_purged["outbox"] == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    after = await store.get(delivered.decision_id)
    assert after is not None
    [state] = after.writeback
    [live] = before.writeback
    assert live.delivered_at is not None
    # Rebuilt from the timeline: the same facts, to the microsecond.
    assert msgspec.structs.replace(state, last_error=None) == live
    assert [entry.stage for entry in after.timeline] == ["committed", "published"]
    pending = await store.get(waiting.decision_id)
    assert pending is not None
    assert [s.status for s in pending.writeback] == ["pending"]


async def test_a_second_process_skips_while_one_runs(
    pool: asyncpg.Pool, config: WritebackConfig
) -> None:
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", 0x5C0E_6A7E_0002)
        try:
            report = await Retention(pool, config).run_once()
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", 0x5C0E_6A7E_0002)
    assert report.skipped
    assert not report.partitions_created
