"""Operators' controls of the ingest workers, kept in Redis where every worker reads them."""

from __future__ import annotations

import redis.asyncio as aioredis


class IngestControls:
    """The topics operators paused, shared by every ingest worker of one online store.

    Args:
        client: the online store's Redis.
        prefix: the online store's key prefix.
    """

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self.key = f"{prefix}:ingest:paused"

    async def paused(self) -> set[str]:
        """The topics paused now."""
        members = await self._client.smembers(self.key)
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    async def pause(self, topic: str) -> None:
        """Pause ``topic`` on every worker (each within a second)."""
        await self._client.sadd(self.key, topic)

    async def resume(self, topic: str) -> None:
        """Resume ``topic`` on every worker."""
        await self._client.srem(self.key, topic)
