"""Create the database and apply the schema migrations shipped in ``writeback/migrations``.

Each ``*.sql`` file is applied once, in name order, in its own transaction, and
recorded in ``schema_migrations``. A session advisory lock serialises concurrent
starters, so several processes may call :func:`migrate` at the same time.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from urllib.parse import unquote, urlsplit

import asyncpg

logger = logging.getLogger(__name__)

# Any constant works as long as every scoregate process uses the same one.
_MIGRATION_LOCK_KEY = 0x5C0E_6A7E_0001
_MAINTENANCE_DATABASE = "postgres"

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def _database_name(dsn: str) -> str:
    parts = urlsplit(dsn)
    name = unquote(parts.path.lstrip("/"))
    if not name:
        for pair in parts.query.split("&"):
            key, _, value = pair.partition("=")
            if key in ("dbname", "database") and value:
                name = unquote(value)
    if not name:
        raise ValueError("the DSN names no database")
    return name


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _load_migrations() -> list[tuple[str, str]]:
    folder = resources.files("writeback.migrations")
    files = [entry for entry in folder.iterdir() if entry.name.endswith(".sql")]
    files.sort(key=lambda entry: entry.name)
    return [(entry.name, entry.read_text(encoding="utf-8")) for entry in files]


async def ensure_database(dsn: str) -> bool:
    """Create the database ``dsn`` names unless it exists.

    Connects to the ``postgres`` maintenance database of the same server with the
    same credentials.

    Args:
        dsn: A ``postgresql://`` URL naming the database.

    Returns:
        True if the database was created now, False if it existed.
    """
    name = _database_name(dsn)
    conn = await asyncpg.connect(dsn, database=_MAINTENANCE_DATABASE)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        try:
            await conn.execute(f"CREATE DATABASE {_quote_identifier(name)}")
        except asyncpg.DuplicateDatabaseError:
            # Another starter created it between the check and the CREATE.
            return False
        logger.info("created database %s", name)
        return True
    finally:
        await conn.close()


async def migrate(dsn: str) -> list[str]:
    """Apply every migration not yet applied to the database ``dsn`` names.

    Args:
        dsn: A ``postgresql://`` URL of an existing database.

    Returns:
        The names of the migrations applied by this call, in order (empty if the
        schema was already current).
    """
    # Reading package files is disk I/O: keep it off the event loop.
    migrations = await asyncio.to_thread(_load_migrations)
    conn = await asyncpg.connect(dsn)
    try:
        # A session lock: closing the connection releases it, even after an error.
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_LEDGER)
        done = {row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")}
        applied: list[str] = []
        for name, sql in migrations:
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            logger.info("applied migration %s", name)
            applied.append(name)
        return applied
    finally:
        await conn.close()
