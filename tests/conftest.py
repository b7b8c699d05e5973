"""Shared fixtures: real PostgreSQL, Redis and a Kafka-protocol broker.

Each test that needs a service gets its own database, Redis key prefix and topic,
so tests run in any order. The broker is started once per session on a free port.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.dev.broker import LocalBroker

PG_ADMIN_DSN = os.environ.get(
    "SCOREGATE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SCOREGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _dsn_for(database: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="session")
async def broker() -> AsyncIterator[LocalBroker]:
    """A Tansu broker for the whole session (topics are per test)."""
    local = LocalBroker()
    await local.start()
    yield local
    await local.stop()


@pytest.fixture
def topic() -> str:
    """A fresh outcome topic name for one test."""
    return f"decision-outcomes-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    from writeback.migrate import migrate

    name = f"sg_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = _dsn_for(name)
    await migrate(dsn)
    yield dsn
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def redis_url() -> str:
    """The Redis server tests use."""
    return REDIS_URL


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of one test's own; its keys are deleted afterwards."""
    prefix = f"sgt{uuid.uuid4().hex[:10]}"
    yield prefix
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
