"""The asyncpg connection pool, with ``json`` and ``jsonb`` encoded and decoded by msgspec.

``jsonb`` travels in PostgreSQL's binary format (a version byte, 1, then the JSON
text), so msgspec's bytes go on the wire as they are, without a ``str`` in between.
Sessions run in UTC.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

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


async def create_pool(config: WritebackConfig) -> asyncpg.Pool:
    """Open the connection pool the audit store and the relay share.

    Args:
        config: Database URL and pool sizes.

    Returns:
        A started pool whose connections speak ``jsonb`` through msgspec.
    """
    return await asyncpg.create_pool(
        config.database_url,
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        init=register_jsonb_codec,
        timeout=CONNECT_TIMEOUT_S,
        # Timestamps rendered inside JSON (jsonb_build_object) then read as UTC too.
        server_settings={"TimeZone": "UTC"},
        reset=_keep_session,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool as it is.

    asyncpg's default reset costs a round trip on every release (``RESET ALL``,
    ``UNLISTEN *``, ``pg_advisory_unlock_all()``), for each group commit and relay
    cycle. Nothing here leaves session state behind: listeners use connections of
    their own, and the one session lock (retention upkeep) is released in ``finally``.
    """
