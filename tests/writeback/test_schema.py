"""Migrations: applied once, in order, safely from several starters at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from importlib import resources

import asyncpg
import pytest

from writeback.schema import ensure_database, migrate

pytestmark = pytest.mark.services

MIGRATIONS = sorted(
    entry.name
    for entry in resources.files("writeback.migrations").iterdir()
    if entry.name.endswith(".sql")
)


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


async def test_partitioning_migration_keeps_existing_decisions(unmigrated_dsn: str) -> None:
    await ensure_database(unmigrated_dsn)
    folder = resources.files("writeback.migrations")
    conn = await asyncpg.connect(unmigrated_dsn)
    try:
        # A database as the first migration left it, with a delivered decision.
        await conn.execute((folder / MIGRATIONS[0]).read_text())
        await conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY)")
        await conn.execute("INSERT INTO schema_migrations VALUES ($1)", MIGRATIONS[0])
        decision_id, event_id = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            """
            INSERT INTO decisions (decision_id, caller, request_id, model_name, model_version,
                                   subject_entity, subject_id, decided_at, committed_at, record)
            VALUES ($1, 'a', 'r-1', 'm', '1', 'customer', 'c-1', now(),
                    now() - interval '40 days', '{"kept": true}')
            """,
            decision_id,
        )
        await conn.execute(
            "INSERT INTO rollbacks VALUES ($1, 'why', 'ops', now(), $2)", decision_id, uuid.uuid4()
        )
        await conn.execute(
            """
            INSERT INTO outbox (event_id, decision_id, event_type, topic, message_key, payload,
                                event_time, status, attempts, "partition", "offset", delivered_at)
            VALUES ($1, $2, 't', 'topic', 'c-1', '\\x7b7d', now(), 'delivered', 1, 0, 5, now())
            """,
            event_id,
            decision_id,
        )

        assert await migrate(unmigrated_dsn) == MIGRATIONS[1:]

        row = await conn.fetchrow(
            "SELECT tableoid::regclass::text AS part, record::text FROM decisions"
        )
        assert row is not None
        assert row["part"].startswith("decisions_p")
        assert row["record"] == '{"kept": true}'
        assert (
            await conn.fetchval(
                "SELECT decision_id FROM decision_requests"
                " WHERE caller = 'a' AND request_id = 'r-1'"
            )
            == decision_id
        )
        stages = await conn.fetch(
            'SELECT stage, "offset" FROM writeback_timeline WHERE event_id = $1 ORDER BY seq',
            event_id,
        )
        assert [(s["stage"], s["offset"]) for s in stages] == [
            ("committed", None),
            ("published", 5),
        ]
        assert await conn.fetchval("SELECT count(*) FROM rollbacks") == 1
    finally:
        await conn.close()
