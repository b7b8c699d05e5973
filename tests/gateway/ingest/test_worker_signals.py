"""The ingest worker shares its freshness signals through Redis: after events go through
the real broker, any process reads their ingest lag, event times, consumer lag and
schema changes from the online store's Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from gateway.freshness.signals import FreshnessSignals, read_signals
from gateway.ingest.worker import IngestSettings, IngestWorker
from scoregate_dev.broker import LocalBroker
from tests.support.ingest import Topics, feature_update, produce, running, until

pytestmark = pytest.mark.services

LAG = timedelta(seconds=3)


def update(customer: str, count: int, at: datetime, **extra: Any) -> Any:
    return feature_update("customer_id", customer, {"txn_count_30m": count}, at, **extra)


async def signals_of(
    redis_client: aioredis.Redis, settings: IngestSettings, worker: IngestWorker
) -> FreshnessSignals:
    registry = worker.registry
    return await read_signals(
        redis_client,
        settings.redis_prefix,
        registry.features,
        registry.file.streams,
        datetime.now(UTC),
    )


async def test_lag_event_times_and_consumer_lag_of_ingested_events_are_shared(
    ingest_settings: IngestSettings,
    topics: Topics,
    broker: LocalBroker,
    redis_client: aioredis.Redis,
) -> None:
    # Events that happened a few seconds before the worker reads them: at least that lag.
    start = datetime.now(UTC) - LAG
    times = [start + timedelta(milliseconds=10 * i) for i in range(20)]
    records = [update(f"c-{i}", i, at) for i, at in enumerate(times)]
    records.append(update("c-bad", 1, start, schema_version=9))
    await produce(broker.bootstrap, topics.updates, records)
    async with running(ingest_settings) as worker:

        async def reported() -> bool:
            found = await signals_of(redis_client, ingest_settings, worker)
            stream = found.streams["test_updates"]
            lag = found.features["txn_count_30m"].ingest_lag["5m"]
            return (
                lag.count == 20 and stream.consumer_lag == 0 and bool(found.recent_schema_changes)
            )

        await until(reported)
        found = await signals_of(redis_client, ingest_settings, worker)

    feature = found.features["txn_count_30m"]
    lag = feature.ingest_lag["5m"]
    # Each value's lag is at least how long before its read it happened (3 s, less the
    # 190 ms the events span), within the histogram's 2.5% resolution.
    assert lag.p50_ms is not None and lag.p99_ms is not None
    assert lag.p50_ms >= (LAG.total_seconds() * 1000 - 200) * 0.975
    assert lag.p99_ms >= lag.p50_ms
    assert feature.ingest_lag["1h"].count == feature.ingest_lag["1d"].count == 20
    newest = times[-1]
    assert feature.last_event_time is not None
    assert abs(feature.last_event_time - newest) < timedelta(milliseconds=1)
    stream = found.streams["test_updates"]
    assert stream.last_event_time == feature.last_event_time
    assert stream.topic == topics.updates
    # Every partition of the topic is measured, those no record went to as well.
    assert stream.partitions
    assert all(p.lag == 0 for p in stream.partitions)
    assert [(c.feature, c.kind, c.count) for c in stream.schema_changes] == [
        ("txn_count_30m", "schema_version", 1)
    ]
    assert feature.schema_changes == {"schema_version": 1}
    [change] = found.recent_schema_changes
    assert (change.stream, change.kind) == ("test_updates", "schema_version")
    assert change.detail
    # Nothing the worker did not ingest has figures.
    other = found.features["chargeback_rate_90d"]
    assert (other.ingest_lag["1d"].count, other.last_event_time) == (0, None)
    assert found.streams["test_changes"].last_event_time is None


async def test_what_the_worker_counted_is_flushed_when_it_stops(
    ingest_settings: IngestSettings,
    topics: Topics,
    broker: LocalBroker,
    redis_client: aioredis.Redis,
) -> None:
    # Flushes an hour apart: the first is done before any record is there, so only the
    # one on stop can write what the worker counted.
    settings = msgspec.structs.replace(ingest_settings, signals_interval_s=3600.0)
    async with running(settings) as worker:
        await until(lambda: _flushed_once(worker))
        at = datetime.now(UTC) - LAG
        records = [update(f"c-{i}", i, at + timedelta(milliseconds=i)) for i in range(12)]
        await produce(broker.bootstrap, topics.updates, records)
        await until(lambda: _written(worker, 12))
        before = await signals_of(redis_client, settings, worker)
        assert before.features["txn_count_30m"].ingest_lag["5m"].count == 0
    found = await signals_of(redis_client, settings, worker)
    assert found.features["txn_count_30m"].ingest_lag["5m"].count == 12
    last = found.streams["test_updates"].last_event_time
    assert last is not None
    assert abs(last - (at + timedelta(milliseconds=11))) < timedelta(milliseconds=1)


async def _flushed_once(worker: IngestWorker) -> bool:
    return not worker.signals.due()


async def _written(worker: IngestWorker, expected: int) -> bool:
    return worker.report.written >= expected
