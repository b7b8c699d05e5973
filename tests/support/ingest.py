"""Feeding the ingest worker: feature-update CloudEvents and change events produced to
the broker, topics of a test's own, and a worker run in the test's loop."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gateway.ingest.worker import IngestSettings, IngestWorker, Replay

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Topics:
    """A test's own topics: feature updates and change events."""

    updates: str
    changes: str


def feature_update(
    entity_key: str,
    entity_id: str,
    features: Mapping[str, Any],
    event_time: datetime,
    *,
    event_id: str | None = None,
    effective_time: datetime | None = None,
    schema_version: int | None = 1,
    source: str = "/orders-service",
) -> tuple[bytes, bytes, Headers]:
    """A feature-update event in CloudEvents binary mode: key, value and headers."""
    data: dict[str, Any] = {
        "entities": {entity_key: entity_id},
        "features": dict(features),
        "event_time": event_time.isoformat(),
        "lineage": {
            "source_system": "orders-service",
            "source_ref": f"orders:{entity_id}:{event_time.timestamp()}",
            "transform": "agg_v1",
        },
    }
    if schema_version is not None:
        data["lineage"]["schema_version"] = schema_version
    if effective_time is not None:
        data["effective_time"] = effective_time.isoformat()
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", (event_id or str(uuid.uuid4())).encode()),
        ("ce_source", source.encode()),
        ("ce_type", b"scoregate.features.updated"),
        ("ce_time", event_time.isoformat().encode()),
        ("content-type", b"application/json"),
    ]
    return entity_id.encode(), json.dumps(data).encode(), headers


async def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create ``topic`` with ``partitions`` (the broker would make one on first use)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None, Headers]],
    partition: int | None = None,
) -> None:
    """Produce records in order and wait until the broker has every one."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(
                topic, value, key=key, headers=headers, partition=partition
            )
    finally:
        await producer.stop()


@asynccontextmanager
async def running(
    settings: IngestSettings, replay: Replay | None = None
) -> AsyncIterator[IngestWorker]:
    """A started worker taking batches in this loop until the block ends (then it stops
    as on SIGTERM: the batch in hand is finished and committed)."""
    worker = IngestWorker(settings, replay=replay)
    await worker.start()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await task
        await worker.stop()


async def until(check: Any, timeout: float = 30.0) -> None:
    """Wait until ``await check()`` is true (the state is reached), within ``timeout``."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)
