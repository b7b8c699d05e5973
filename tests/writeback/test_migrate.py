"""Migrations: applied once, in order, safely from several starters at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from writeback.migrate import ensure_database, migrate

pytestmark = pytest.mark.services

MIGRATIONS = ["001_decisions.sql", "002_retention_and_dead_letters.sql"]


def _sibling_dsn(database_url: str, name: str) -> str:
    base, _, _ = database_url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
async def unmigrated_dsn(database_url: str) -> AsyncIterator[str]:
    """The DSN of a database that does not exist yet; dropped afterwards."""
    dsn = _sibling_dsn(database_url, f"sg_test_{uuid.uuid4().hex[:12]}")
    yield dsn
    admin = await asyncpg.connect(_sibling_dsn(database_url, "postgres"))
    try:
        name = dsn.rpartition("/")[2]
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_migrate_again_applies_nothing(database_url: str) -> None:
    assert await migrate(database_url) == []
    conn = await asyncpg.connect(database_url)
    try:
        names = await conn.fetch("SELECT name FROM schema_migrations")
        tables = {
            row["tablename"]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    finally:
        await conn.close()
    assert [row["name"] for row in names] == MIGRATIONS
    assert {
        "decisions",
        "decision_requests",
        "rollbacks",
        "outbox",
        "writeback_timeline",
        "schema_migrations",
    } <= tables


async def test_ensure_database_creates_once(unmigrated_dsn: str) -> None:
    assert await ensure_database(unmigrated_dsn) is True
    assert await ensure_database(unmigrated_dsn) is False


async def test_concurrent_starters_apply_each_migration_once(unmigrated_dsn: str) -> None:
    await ensure_database(unmigrated_dsn)

    results = await asyncio.gather(*(migrate(unmigrated_dsn) for _ in range(6)))

    assert sorted(results) == [[], [], [], [], [], MIGRATIONS]
    conn = await asyncpg.connect(unmigrated_dsn)
    try:
        count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await conn.close()
    assert count == len(MIGRATIONS)


async def test_schema_rejects_unknown_delivery_status(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                """
                INSERT INTO outbox (event_id, decision_id, event_type, topic, message_key,
                                    payload, event_time, status)
                VALUES ($1, $2, 't', 't', 'k', '\\x7b7d', now(), 'lost')
                """,
                uuid.uuid4(),
                uuid.uuid4(),
            )
    finally:
        await conn.close()
