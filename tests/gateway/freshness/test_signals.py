"""Freshness signals shared through Redis: ingest workers write, any process reads the sum.

Every test writes under a key prefix of its own in the real Redis. Writers and readers
are told the time (the slots are those of a fixed moment), so nothing waits for a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from contracts.registry import BreakerPolicy, Stream
from gateway.breaker import DependencyBreaker
from gateway.freshness import histogram
from gateway.freshness.signals import (
    DETAIL_MAX,
    BreakerBoard,
    BreakerCounts,
    FreshnessSignals,
    IngestSignals,
    read_signals,
)
from scoregate_dev.broker import free_port
from tests.support.clock import ManualClock
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.services

NOW = datetime(2026, 12, 1, 12, 30, 30, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
FEATURES = ["txn_count_30m", "chargeback_rate_90d"]
ORDERS = Stream(name="orders", topic="orders-topic", format="feature_update")
MERCHANTS = Stream(name="merchants", topic="merchants-topic", format="debezium")
STREAMS = [ORDERS, MERCHANTS]


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def signals(client: aioredis.Redis, prefix: str) -> IngestSignals:
    return IngestSignals(client, prefix, FEATURES, STREAMS)


async def read(client: aioredis.Redis, prefix: str, now: datetime = NOW) -> FreshnessSignals:
    return await read_signals(client, prefix, FEATURES, STREAMS, now)


def within_resolution(measured: float | None, true_ms: float) -> bool:
    """A quantile read from the buckets is within half a bucket (2.5%) of the value."""
    assert measured is not None
    return abs(measured - true_ms) <= true_ms * 0.026 + 0.5


async def test_two_workers_add_up_by_bucket_and_the_newest_event_time_wins(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    first, second = signals(redis_client, redis_prefix), signals(redis_client, redis_prefix)
    newest = NOW - timedelta(seconds=5)
    # Alone, the first worker's p99 would be 100 ms: only the sum gives 5 s.
    first.wrote("txn_count_30m", [100.0] * 90, ms(newest - timedelta(seconds=10)), NOW_MS)
    second.wrote("txn_count_30m", [5000.0] * 10, ms(newest), NOW_MS)
    # Half an hour ago: in the hour and the day, not the five minutes.
    second.wrote("txn_count_30m", [20.0] * 50, ms(NOW - timedelta(minutes=31)), NOW_MS - 1_800_000)
    # Three hours ago: in the day only.
    first.wrote("txn_count_30m", [20.0] * 7, ms(NOW - timedelta(hours=3)), NOW_MS - 3 * 3_600_000)
    # A value nobody registered is not counted anywhere (and names no key).
    first.wrote("no_such_feature", [1.0], NOW_MS, NOW_MS)
    second.seen("orders", ms(newest))
    first.seen("orders", ms(newest - timedelta(seconds=1)))
    first.seen("not_a_stream", NOW_MS)
    assert await first.flush() and await second.flush()
    # A later flush of an older event time leaves the newest in place (ZADD GT).
    first.wrote("txn_count_30m", [100.0], ms(newest - timedelta(minutes=1)), NOW_MS)
    first.seen("orders", ms(newest - timedelta(minutes=1)))
    assert await first.flush()

    found = await read(redis_client, redis_prefix)
    lag = found.features["txn_count_30m"].ingest_lag
    assert (lag["5m"].count, lag["1h"].count, lag["1d"].count) == (101, 151, 158)
    assert lag["5m"].buckets == {histogram.bucket_of(100): 91, histogram.bucket_of(5000): 10}
    assert within_resolution(lag["5m"].p50_ms, 100)
    assert within_resolution(lag["5m"].p99_ms, 5000)
    assert within_resolution(lag["1h"].p50_ms, 100)
    assert within_resolution(lag["1d"].p50_ms, 100)
    assert lag["1d"].buckets[histogram.bucket_of(20)] == 57
    feature = found.features["txn_count_30m"]
    assert feature.last_event_time == newest
    assert found.streams["orders"].last_event_time == newest
    assert found.streams["merchants"].last_event_time is None
    other = found.features["chargeback_rate_90d"].ingest_lag["1d"]
    assert (other.count, other.p50_ms, other.p99_ms) == (0, None, None)
    keys = [key async for key in redis_client.scan_iter(match=f"{redis_prefix}:*")]
    assert not [key for key in keys if b"no_such_feature" in key or b"not_a_stream" in key]


async def test_minute_and_hour_slots_expire(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    writer = signals(redis_client, redis_prefix)
    writer.wrote("txn_count_30m", [10.0], NOW_MS, NOW_MS)
    assert await writer.flush()
    minute = await redis_client.ttl(
        f"{redis_prefix}:freshness:lag:m:txn_count_30m:{NOW_MS // 60_000}"
    )
    hour = await redis_client.ttl(
        f"{redis_prefix}:freshness:lag:h:txn_count_30m:{NOW_MS // 3_600_000}"
    )
    assert 2 * 3600 <= minute < 3 * 3600
    assert 2 * 86400 <= hour < 3 * 86400


async def test_a_stale_consumer_lag_is_not_counted(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    old_owner, new_owner = signals(redis_client, redis_prefix), signals(redis_client, redis_prefix)
    # Partition 0 moved from the old owner to the new one; partition 1 stayed.
    old_owner.consumer_lag("orders-topic", 0, 500, NOW_MS - 120_000)
    old_owner.consumer_lag("orders-topic", 1, 7, NOW_MS - 1_000)
    assert await old_owner.flush()
    new_owner.consumer_lag("orders-topic", 2, 4, NOW_MS - 1_000)
    assert await new_owner.flush()
    # A partition revoked before the flush is its new owner's to report.
    new_owner.consumer_lag("merchants-topic", 0, 9, NOW_MS)
    new_owner.forget([TopicPartition("merchants-topic", 0)])
    assert await new_owner.flush()

    found = await read(redis_client, redis_prefix)
    orders = found.streams["orders"]
    assert [(p.partition, p.lag) for p in orders.partitions] == [(1, 7), (2, 4)]
    assert orders.consumer_lag == 11
    assert found.streams["merchants"].consumer_lag is None

    new_owner.consumer_lag("orders-topic", 0, 3, NOW_MS)
    assert await new_owner.flush()
    orders = (await read(redis_client, redis_prefix)).streams["orders"]
    assert [(p.partition, p.lag) for p in orders.partitions] == [(0, 3), (1, 7), (2, 4)]
    assert orders.consumer_lag == 14


async def test_schema_changes_are_counted_and_the_latest_listed(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    first, second = signals(redis_client, redis_prefix), signals(redis_client, redis_prefix)
    first.schema_change("orders", "txn_count_30m", "schema_version", "version 9", NOW_MS - 3000)
    second.schema_change("orders", "txn_count_30m", "schema_version", "version 9", NOW_MS - 2000)
    second.schema_change("merchants", "", "missing_column", "x" * 5000, NOW_MS - 1000)
    # A feature the registry does not name is counted without it; unknown kinds and
    # streams are not counted at all.
    first.schema_change("orders", "made_up", "extra_field", "an unmapped field 'made_up'", NOW_MS)
    first.schema_change("orders", "txn_count_30m", "dtype", "not a schema change", NOW_MS)
    first.schema_change("elsewhere", "", "schema_version", "not ours", NOW_MS)
    assert await first.flush() and await second.flush()

    found = await read(redis_client, redis_prefix)
    orders = found.streams["orders"]
    assert [(c.feature, c.kind, c.count) for c in orders.schema_changes] == [
        ("", "extra_field", 1),
        ("txn_count_30m", "schema_version", 2),
    ]
    merchants = found.streams["merchants"]
    assert [(c.feature, c.kind, c.count) for c in merchants.schema_changes] == [
        ("", "missing_column", 1)
    ]
    feature = found.features["txn_count_30m"]
    assert feature.schema_changes == {"schema_version": 2}
    recent = found.recent_schema_changes
    # Newest first by when it was flushed: first's flush went in before second's.
    assert [(c.stream, c.kind) for c in recent] == [
        ("merchants", "missing_column"),
        ("orders", "schema_version"),
        ("orders", "extra_field"),
        ("orders", "schema_version"),
    ]
    assert recent[0].detail == "x" * DETAIL_MAX
    assert recent[0].at == NOW - timedelta(seconds=1)
    assert recent[2].feature == ""


async def test_the_recent_list_is_capped(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    writer = signals(redis_client, redis_prefix)
    for round_ in range(5):
        for i in range(100):
            writer.schema_change("orders", "", "extra_field", f"field {round_}-{i}", NOW_MS)
        assert await writer.flush()
    # XADD MAXLEN ~ trims whole nodes: the stream holds about 100, never all 500.
    assert await redis_client.xlen(f"{redis_prefix}:freshness:schema:recent") < 250
    found = await read(redis_client, redis_prefix)
    assert found.recent_schema_changes[0].detail == "field 4-99"


def _breaker(name: str, clock: ManualClock) -> DependencyBreaker:
    return DependencyBreaker(name, BreakerPolicy(fail_max=1, reset_timeout_ms=100), clock=clock)


async def _open(breaker: DependencyBreaker) -> None:
    with pytest.raises(ConnectionError):
        async with breaker.guard():
            raise ConnectionError("down")
    assert breaker.state == "open"


async def test_breaker_states_are_counted_over_live_processes(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    monotonic = ManualClock()
    wall = ManualClock()
    wall.now = NOW.timestamp()
    # Two gateway processes, each with its own breaker of the same source.
    source_a, store_a = _breaker("source:merchants", monotonic), _breaker("online_store", monotonic)
    source_b, store_b = _breaker("source:merchants", monotonic), _breaker("online_store", monotonic)
    await _open(source_b)
    board_a = BreakerBoard(redis_client, redis_prefix, lambda: [source_a, store_a], clock=wall)
    board_b = BreakerBoard(redis_client, redis_prefix, lambda: [source_b, store_b], clock=wall)
    assert board_a.process != board_b.process
    assert await board_a.publish() and await board_b.publish()

    found = await read(redis_client, redis_prefix, NOW + timedelta(seconds=1))
    assert found.processes == 2
    assert found.breakers == {
        "online_store": BreakerCounts(closed=2),
        "source:merchants": BreakerCounts(closed=1, open=1),
    }

    # b's reset timeout passes and its probe is in flight when it publishes again.
    monotonic.advance(0.2)
    async with source_b.guard():
        assert source_b.state == "half-open"
        assert await board_b.publish()
    found = await read(redis_client, redis_prefix, NOW + timedelta(seconds=1))
    assert found.breakers["source:merchants"] == BreakerCounts(closed=1, half_open=1)

    # b stops publishing; a goes on. Three intervals (15 s) on, b no longer counts.
    wall.advance(20)
    assert await board_a.publish()
    found = await read(redis_client, redis_prefix, NOW + timedelta(seconds=20))
    assert found.processes == 1
    assert found.breakers == {
        "online_store": BreakerCounts(closed=1),
        "source:merchants": BreakerCounts(closed=1),
    }
    # b's entry expires by itself (TTL) and a's publication took it off the live list.
    b_key = f"{redis_prefix}:freshness:breakers:{board_b.process}"
    assert 0 < await redis_client.pttl(b_key) <= 15_000  # -1 would be an entry kept forever
    live = await redis_client.zrange(f"{redis_prefix}:freshness:breakers:live", 0, -1)
    assert live == [board_a.process.encode()]

    await board_a.stop()
    found = await read(redis_client, redis_prefix, NOW + timedelta(seconds=20))
    assert (found.processes, found.breakers) == (0, {})


async def test_a_started_board_publishes_until_stopped(
    redis_client: aioredis.Redis, redis_prefix: str, redis_url: str
) -> None:
    store = _breaker("online_store", ManualClock())
    board = BreakerBoard.from_url(redis_url, redis_prefix, lambda: [store], interval_s=0.5)
    await board.start()
    live = f"{redis_prefix}:freshness:breakers:live"
    try:
        first = await redis_client.zscore(live, board.process)
        assert first is not None
        # The heartbeat moves on by itself.
        async with asyncio.timeout(10):
            while await redis_client.zscore(live, board.process) == first:
                await asyncio.sleep(0.02)
        found = await read_signals(redis_client, redis_prefix, [], [], datetime.now(UTC))
        assert found.breakers == {"online_store": BreakerCounts(closed=1)}
    finally:
        await board.stop()
    assert await redis_client.zscore(live, board.process) is None


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
async def closed_port() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    yield client
    await client.aclose()


async def test_redis_down_does_not_fail_the_flush_and_keeps_bounded_counts(
    closed_port: aioredis.Redis,
) -> None:
    clock = ManualClock()
    writer = IngestSignals(
        closed_port, "down", FEATURES, STREAMS, max_pending_minutes=10, clock=clock
    )
    failures = _counter("scoregate_freshness_signal_flush_failures_total")
    dropped = _counter("scoregate_freshness_signals_dropped_total")
    for minute in range(30):
        writer.wrote("txn_count_30m", [10.0, 20.0], NOW_MS, NOW_MS + minute * 60_000)
        writer.schema_change("orders", "", "extra_field", f"field {minute}", NOW_MS)
        writer.consumer_lag("orders-topic", 0, minute, NOW_MS)
        assert not await writer.flush()
    # Thirty minutes' counts came and Redis took none: ten minutes are kept.
    assert writer.pending_minutes == 10
    assert writer.pending_values == 20
    assert _counter("scoregate_freshness_signals_dropped_total") == dropped + 40
    assert _counter("scoregate_freshness_signal_flush_failures_total") == failures + 30
    # Kept bounded between flushes too, however long none is attempted.
    unflushed = IngestSignals(closed_port, "down", FEATURES, STREAMS, max_pending_minutes=10)
    for minute in range(30):
        unflushed.wrote("txn_count_30m", [10.0], NOW_MS, NOW_MS + minute * 60_000)
    assert (unflushed.pending_minutes, unflushed.pending_values) == (10, 10)
    # After a failure the next flush waits longer than the interval.
    clock.advance(1.0)
    assert not writer.due()
    clock.advance(60.0)
    assert writer.due()


async def test_redis_that_stops_answering_does_not_stall_the_flush() -> None:
    # A server that takes connections and never answers: the flush gives up on its own.
    silent: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        writer = IngestSignals(client, "silent", FEATURES, STREAMS, flush_timeout_s=0.2)
        writer.wrote("txn_count_30m", [10.0] * 3, NOW_MS, NOW_MS)
        dropped = _counter("scoregate_freshness_signals_dropped_total")
        async with asyncio.timeout(30):
            assert not await writer.flush()
        # Redis may have applied what it was sent: sending the counts again could count
        # them twice, so they are let go (and counted as dropped).
        assert writer.pending_values == 0
        assert _counter("scoregate_freshness_signals_dropped_total") == dropped + 3
    finally:
        await client.aclose()
        for connection in silent:
            connection.transport.abort()
        server.close()
        await server.wait_closed()


async def test_counts_kept_through_an_outage_are_written_when_redis_is_back(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    proxy = TcpProxy(target_port=6379)
    await proxy.start()
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
    try:
        writer = IngestSignals(client, redis_prefix, FEATURES, STREAMS)
        writer.wrote("txn_count_30m", [10.0] * 3, NOW_MS - 1000, NOW_MS)
        assert await writer.flush()
        await proxy.stop()
        writer.wrote("txn_count_30m", [10.0] * 4, NOW_MS, NOW_MS)
        writer.schema_change("orders", "", "extra_field", "during the outage", NOW_MS)
        assert not await writer.flush()
        writer.wrote("txn_count_30m", [10.0] * 5, NOW_MS, NOW_MS)
        await proxy.start()
        assert await writer.flush()
    finally:
        await client.aclose()
        await proxy.stop()
    found = await read(redis_client, redis_prefix)
    lag = found.features["txn_count_30m"].ingest_lag["5m"]
    assert lag.count == 12
    assert found.features["txn_count_30m"].last_event_time == NOW
    assert [c.detail for c in found.recent_schema_changes] == ["during the outage"]
