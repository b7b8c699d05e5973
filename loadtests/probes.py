"""The round trips ``/score`` waits on, measured on their own from the load client's host.

Each probe does one dependency call the way the gateway does it, with the same
client library and the same payload size, so that ``/score``'s median minus the
probes' medians is the time the gateway spends on its own:

- ``RedisRead``: one ``HMGET`` per entity of the model's stored features, pipelined
  into one round trip (redis-py asyncio, as the online store reads them);
- ``ModelCall``: one Open Inference Protocol v2 call with the request body the
  gateway sends (aiohttp, kept-alive connections);
- ``AuditCommit``: one decision-sized row committed on its own (asyncpg, same
  database; the commit waits for the WAL flush, as the gateway's does).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import msgspec
import redis.asyncio as aioredis

from contracts.inference import InferInput, InferRequest

EntityIds = Callable[[int], dict[str, str]]
"""Entity name to entity id for call number n."""


@dataclass(frozen=True)
class ModelShape:
    """What a model reads and sends, taken from the gateway's ``GET /registry``."""

    name: str
    endpoint: str
    entity_keys: dict[str, str]
    stored: dict[str, list[str]]
    """Feature names kept in the online store, by entity."""
    input_name: str
    datatype: str
    width: int

    @classmethod
    def from_registry(cls, registry: dict[str, Any], model: str) -> ModelShape:
        """The shape of ``model`` in a registry as ``GET /registry`` answers it."""
        spec = next(m for m in registry["models"] if m["name"] == model)
        entity_of = {f["name"]: f["entity"] for f in registry["features"]}
        stored: dict[str, list[str]] = {}
        for name in spec["features"]:
            stored.setdefault(entity_of[name], []).append(name)
        layout = spec["input"]
        return cls(
            name=spec["name"],
            endpoint=spec["endpoint"].rstrip("/"),
            entity_keys={e["name"]: e["key"] for e in registry["entities"]},
            stored=stored,
            input_name=layout.get("name") or "input-0",
            datatype=layout.get("datatype") or "FP64",
            width=len(spec["features"]) + len(spec["context"]),
        )


class RedisRead:
    """The online store's read: an HMGET per entity, one pipelined round trip."""

    def __init__(self, url: str, prefix: str, shape: ModelShape, entity_ids: EntityIds) -> None:
        self._client = aioredis.Redis.from_url(url, max_connections=64)
        self._prefix = prefix
        self._shape = shape
        self._entity_ids = entity_ids

    async def __call__(self, number: int) -> None:
        """Read one request's stored features; fail unless every entity has values."""
        ids = self._entity_ids(number)
        pipe = self._client.pipeline(transaction=False)
        for entity, names in self._shape.stored.items():
            pipe.hmget(f"{self._prefix}:{entity}:{ids[entity]}", names)
        rows = await pipe.execute()
        if not all(any(value is not None for value in row) for row in rows):
            raise LookupError("an entity has no stored features")

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


class ModelCall:
    """One inference call with the body the gateway sends (one ``[1, n]`` tensor)."""

    def __init__(self, shape: ModelShape) -> None:
        self._url = f"{shape.endpoint}/v2/models/{shape.name}/infer"
        self._shape = shape
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), timeout=aiohttp.ClientTimeout(total=5)
        )
        self._encode = msgspec.json.Encoder().encode

    def body(self, number: int) -> bytes:
        """A request as the gateway's model client encodes it, with plausible values."""
        values = [float((number * 31 + i * 7) % 97) / 7 for i in range(self._shape.width)]
        request = InferRequest(
            id=str(uuid.uuid4()),
            inputs=[
                InferInput(
                    name=self._shape.input_name,
                    shape=[1, self._shape.width],
                    datatype=self._shape.datatype,  # type: ignore[arg-type]
                    data=values,
                )
            ],
        )
        return self._encode(request)

    async def __call__(self, number: int) -> None:
        """Call the model once; fail on any answer but 200."""
        async with self._session.post(
            self._url, data=self.body(number), headers={"content-type": "application/json"}
        ) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"model answered {response.status}")

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()


class AuditCommit:
    """One decision-sized row, committed in its own transaction.

    The row goes to a table of its own in the gateway's database, dropped again by
    ``close``; its size is that of a real decision record of the run.
    """

    TABLE = "benchmark_commit_probe"

    def __init__(self, pool: asyncpg.Pool, record: str) -> None:
        self._pool = pool
        self._record = record

    @classmethod
    async def open(cls, database_url: str, record: str) -> AuditCommit:
        """Connect, create the probe's table and return the probe."""
        pool = await asyncpg.create_pool(database_url, min_size=8, max_size=32)
        await pool.execute(
            f"CREATE TABLE IF NOT EXISTS {cls.TABLE} ("
            " id uuid PRIMARY KEY, committed_at timestamptz NOT NULL DEFAULT now(),"
            " record json NOT NULL)"
        )
        return cls(pool, record)

    async def __call__(self, _: int) -> None:
        """Insert and commit one row."""
        await self._pool.execute(
            f"INSERT INTO {self.TABLE} (id, record) VALUES ($1, $2)", uuid.uuid4(), self._record
        )

    async def close(self) -> None:
        """Drop the probe's table and disconnect."""
        await self._pool.execute(f"DROP TABLE IF EXISTS {self.TABLE}")
        await self._pool.close()
