"""The asyncpg connection pool, with ``json`` and ``jsonb`` encoded and decoded by msgspec.

``jsonb`` travels in PostgreSQL's binary format (a version byte, 1, then the JSON
text), so msgspec's bytes go on the wire as they are, without a ``str`` in between.
Sessions run in UTC. Waiting for a free connection is bounded: see :class:`BoundedPool`.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import msgspec
from asyncpg.pool import PoolAcquireContext

from writeback.config import WritebackConfig

# Bounds of one connection attempt, so an unreachable server fails fast.
CONNECT_TIMEOUT_S = 5.0

_JSONB_VERSION = b"\x01"
_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


def encode_jsonb(value: Any) -> bytes:
    """Encode a value for a ``jsonb`` parameter.

    ``bytes`` (or ``bytearray``, ``memoryview``) are taken as JSON text that is
    already encoded; anything else is encoded with msgspec.

    Args:
        value: A msgspec-encodable value, or encoded JSON.

    Returns:
        The binary ``jsonb`` wire form.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return _JSONB_VERSION + bytes(value)
    return _JSONB_VERSION + _json_encoder.encode(value)


def decode_jsonb(data: bytes) -> Any:
    """Decode a binary ``jsonb`` value into Python objects.

    Args:
        data: The binary ``jsonb`` wire form.

    Returns:
        The decoded JSON (dicts, lists, strings, numbers, bools, None).
    """
    if data[:1] != _JSONB_VERSION:
        raise ValueError(f"unsupported jsonb format version {data[:1]!r}")
    return _json_decoder.decode(memoryview(data)[1:])


def encode_json(value: Any) -> bytes:
    """Encode a value for a ``json`` parameter (``bytes`` are taken as encoded JSON)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return _json_encoder.encode(value)


def decode_json(data: bytes) -> Any:
    """Decode a ``json`` value (its binary form is the JSON text itself)."""
    return _json_decoder.decode(data)


async def register_jsonb_codec(conn: asyncpg.Connection) -> None:
    """Make ``conn`` encode and decode ``json`` and ``jsonb`` with msgspec, in binary.

    Args:
        conn: A new connection (used as the pool's ``init`` hook).
    """
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=encode_jsonb,
        decoder=decode_jsonb,
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        schema="pg_catalog",
        encoder=encode_json,
        decoder=decode_json,
        format="binary",
    )


class BoundedPool(asyncpg.Pool):
    """An asyncpg pool whose callers wait at most ``acquire_timeout`` for a connection.

    asyncpg's own pool waits without limit unless each call passes a timeout; here
    every acquisition that names none, including those inside ``pool.fetch`` and the
    like, gets the pool's. A burst then queues for its turn, and a pool that stays
    exhausted (every connection held by something stuck) fails its callers with
    ``TimeoutError`` instead of holding them past their deadlines.

    Args:
        *args: What :class:`asyncpg.Pool` takes.
        acquire_timeout: Seconds to wait for a free connection.
        **kwargs: What :class:`asyncpg.Pool` takes.
    """

    def __init__(self, *args: Any, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        """Acquire a connection, waiting at most ``timeout`` (default: the pool's bound)."""
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


log = logging.getLogger(__name__)


def _refused_as_read_only(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, asyncpg.ReadOnlySQLTransactionError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


async def reconnect_if_read_only(pool: asyncpg.Pool, exc: BaseException) -> bool:
    """Drop the pool's connections when ``exc`` shows PostgreSQL refused a write as read-only.

    A demoted primary stays reachable but refuses writes, and so does every session
    opened while ``default_transaction_read_only`` was on: the pool's connections would
    refuse them for as long as they live. New connections reach whatever is primary by
    then, so whoever meets the refusal (a request, the relay, the sealer, retention)
    makes the process heal by itself once a writable primary is back.

    Args:
        pool: The pool whose connection met ``exc``.
        exc: The error, or one wrapping it.

    Returns:
        True when the connections were dropped.
    """
    if not _refused_as_read_only(exc):
        return False
    log.warning("PostgreSQL refused a write as read-only: reconnecting the pool")
    await pool.expire_connections()
    return True


async def create_pool(config: WritebackConfig) -> BoundedPool:
    """Open the connection pool the audit store, the reads and the background work share.

    Args:
        config: Database URL, pool sizes and how long a caller waits for a connection.

    Returns:
        A started pool whose connections speak ``jsonb`` through msgspec.
    """
    pool = BoundedPool(
        config.database_url,
        acquire_timeout=config.pool_acquire_timeout_ms / 1000,
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        init=register_jsonb_codec,
        timeout=CONNECT_TIMEOUT_S,
        # Timestamps rendered inside JSON (jsonb_build_object) then read as UTC too.
        server_settings={"TimeZone": "UTC"},
        reset=_keep_session,
    )
    await pool
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool as it is.

    asyncpg's default reset costs a round trip on every release (``RESET ALL``,
    ``UNLISTEN *``, ``pg_advisory_unlock_all()``), for each group commit and relay
    cycle. Nothing here leaves session state behind: listeners use connections of
    their own, and the one session lock (retention upkeep) is released in ``finally``.
    """
