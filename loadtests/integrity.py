"""After the load: is every answered decision audited, and on Kafka exactly once?

Three counts are compared for the decisions a benchmark run was answered 200 for:
the audit rows in PostgreSQL, the ``decision.made`` events on the outcome topic, and
the distinct CloudEvents ids among those events (a repeat would be a duplicate).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Collection
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

MADE = "scoregate.decision.made"


async def wait_delivered(database_url: str, limit_s: float) -> dict[str, Any]:
    """Wait until the outbox holds no pending event (or ``limit_s`` passed)."""
    conn = await asyncpg.connect(database_url)
    started = time.perf_counter()
    try:
        while True:
            pending = await conn.fetchval("SELECT count(*) FROM outbox WHERE status = 'pending'")
            waited = time.perf_counter() - started
            if pending == 0 or waited >= limit_s:
                return {"pending": pending, "waited_s": round(waited, 2)}
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def committed_decisions(database_url: str, caller: str, request_prefix: str) -> list[str]:
    """Ids of the run's audit rows: the caller's decisions under the run's request ids."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT decision_id::text AS id FROM decisions"
            " WHERE caller = $1 AND starts_with(request_id, $2)",
            caller,
            request_prefix,
        )
    finally:
        await conn.close()
    return [row["id"] for row in rows]


async def audit_counts(database_url: str, decision_ids: Collection[str]) -> dict[str, int]:
    """Audit rows and dead-lettered events among the given decisions."""
    conn = await asyncpg.connect(database_url)
    try:
        found = await conn.fetchval(
            "SELECT count(DISTINCT decision_id) FROM decisions WHERE decision_id = ANY($1::uuid[])",
            list(decision_ids),
        )
        dead = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE status = 'dead_lettered'"
            " AND decision_id = ANY($1::uuid[])",
            list(decision_ids),
        )
    finally:
        await conn.close()
    return {"answered_ids_in_audit": found, "dead_lettered": dead}


async def topic_counts(
    bootstrap: str, topic: str, decision_ids: Collection[str], limit_s: float = 60.0
) -> dict[str, int]:
    """Read the whole topic from the beginning (no consumer group) and count the run's
    ``decision.made`` events, their distinct ``ce_id`` and the repeats."""
    wanted = set(decision_ids)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    ids: Counter[str] = Counter()
    subjects: set[str] = set()
    records = 0
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if partitions:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            async with asyncio.timeout(limit_s):
                while await _behind(consumer, ends):
                    batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                    for messages in batch.values():
                        for message in messages:
                            records += 1
                            headers = {k: v.decode() for k, v in message.headers}
                            subject = headers.get("ce_subject", "")
                            if headers.get("ce_type") == MADE and subject in wanted:
                                ids[headers.get("ce_id", "")] += 1
                                subjects.add(subject)
    finally:
        await consumer.stop()
    return {
        "records_on_topic": records,
        "made_events_of_run": sum(ids.values()),
        "distinct_ce_id": len(ids),
        "duplicate_ce_id": sum(n - 1 for n in ids.values()),
        "decisions_with_event": len(subjects),
    }


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """True while some partition's position is short of its end offset."""
    for partition, end in ends.items():
        if await consumer.position(partition) < end:
            return True
    return False
