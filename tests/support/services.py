"""Where the real services are, and direct ways into them: PostgreSQL as superuser, a topic read."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

PG_ADMIN_DSN = os.environ.get(
    "SCOREGATE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


REDIS_URL = os.environ.get("SCOREGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def pg_admin(sql: str) -> None:
    """Run one statement as the PostgreSQL superuser, outside any test database."""
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def consume(bootstrap: str, topic: str, expected: int, timeout: float = 15.0) -> list[Any]:
    """Every record of ``topic`` once ``expected`` arrived (and a moment more, to see extras)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < expected:
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    records.extend(batch)
        batches = await consumer.getmany(timeout_ms=500)
        for batch in batches.values():
            records.extend(batch)
    finally:
        await consumer.stop()
    return records
