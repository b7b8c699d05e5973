"""The online store: one Redis hash per entity, one field per feature.

Each field holds a msgpack array: the value, its event time and ingest time (epoch
milliseconds) and its lineage, so one ``HMGET`` returns everything a decision needs
to say how fresh a value is and where it came from. Writes go through a Lua script
that compares event times, so an older value never overwrites a newer one.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import msgspec
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from contracts.features import FeatureScalar, Lineage
from contracts.registry import OnlineStoreSpec
from gateway.breaker import BreakerOpen, DependencyBreaker
from gateway.deadline import Deadline


class StoredValue(msgspec.Struct, array_like=True, frozen=True):
    """One feature value as kept in Redis.

    ``event_time_ms`` must stay the second element: the compare-and-set script reads it.
    """

    value: FeatureScalar
    event_time_ms: int
    ingested_at_ms: int
    lineage_id: str
    kind: str
    source_system: str
    source_ref: str
    schema_version: int | None
    transform: str | None

    def lineage(self, entity: str, entity_id: str) -> Lineage:
        """The full lineage record of this value."""
        return Lineage(
            lineage_id=self.lineage_id,
            kind="push" if self.kind == "push" else "fallback",
            source_system=self.source_system,
            source_ref=self.source_ref,
            schema_version=self.schema_version,
            transform=self.transform,
            entity=entity,
            entity_id=entity_id,
            event_time=from_millis(self.event_time_ms),
            ingested_at=from_millis(self.ingested_at_ms),
        )


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(StoredValue).decode

# KEYS[1] = the entity hash; ARGV[1] = event time (ms); then field, value pairs.
# Writes a field only when no stored value is newer; returns the fields written.
_COMPARE_AND_SET = """
local event_time = tonumber(ARGV[1])
local written = {}
for i = 2, #ARGV, 2 do
  local field = ARGV[i]
  local newer = false
  local old = redis.call('HGET', KEYS[1], field)
  if old then
    local ok, decoded = pcall(cmsgpack.unpack, old)
    if ok and type(decoded) == 'table' and tonumber(decoded[2]) ~= nil then
      newer = tonumber(decoded[2]) > event_time
    end
  end
  if not newer then
    redis.call('HSET', KEYS[1], field, ARGV[i + 1])
    written[#written + 1] = field
  end
end
return written
"""


def to_millis(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return int(moment.timestamp() * 1000)


def from_millis(millis: int) -> datetime:
    """An aware UTC datetime from epoch milliseconds."""
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


def lineage_id_for(*parts: object) -> str:
    """A stable id for an upstream record: the same record always gets the same id."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=12)
    return f"lin_{digest.hexdigest()}"


class StoreUnavailable(Exception):
    """Redis did not answer (or its breaker is open)."""


EntityRead = tuple[str, str, Sequence[str]]
"""(entity name, entity id, feature names) to read."""


class OnlineStore:
    """Feature values in Redis, read for many entities in one round trip."""

    def __init__(self, client: aioredis.Redis, prefix: str, spec: OnlineStoreSpec) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout_s = spec.timeout_ms / 1000
        self._compare_and_set = client.register_script(_COMPARE_AND_SET)
        self.breaker = DependencyBreaker("online_store", spec.breaker)

    @classmethod
    def from_url(cls, url: str, prefix: str, spec: OnlineStoreSpec) -> OnlineStore:
        """Connect (lazily) to the Redis at ``url``.

        redis-py's own retries are off: a failed read goes to the sources at once,
        and the breaker, not a retry loop, decides when to try Redis again.
        """
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            max_connections=64,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, prefix, spec)

    def key(self, entity: str, entity_id: str) -> str:
        """The hash that holds one entity's features."""
        return f"{self._prefix}:{entity}:{entity_id}"

    async def read(
        self, reads: Sequence[EntityRead], deadline: Deadline
    ) -> list[dict[str, StoredValue]]:
        """Stored values for each entity read, in one round trip (a pipeline of HMGETs).

        The read spends at most the store's timeout, cut to what the request has left.
        """
        rows: list[list[bytes | None]]
        try:
            async with self.breaker.guard(), asyncio.timeout(deadline.within(self._timeout_s)):
                if len(reads) == 1:
                    entity, entity_id, names = reads[0]
                    rows = [await self._client.hmget(self.key(entity, entity_id), list(names))]  # type: ignore[list-item]
                else:
                    pipe = self._client.pipeline(transaction=False)
                    for entity, entity_id, names in reads:
                        pipe.hmget(self.key(entity, entity_id), list(names))
                    rows = await pipe.execute()
        except TimeoutError as exc:
            raise StoreUnavailable("no answer within the read timeout") from exc
        except (RedisError, OSError, BreakerOpen) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [
            {name: _decode(raw) for name, raw in zip(names, row, strict=True) if raw is not None}
            for (_, _, names), row in zip(reads, rows, strict=True)
        ]

    async def write(
        self,
        entity: str,
        entity_id: str,
        event_time_ms: int,
        values: Mapping[str, StoredValue],
    ) -> list[str]:
        """Write values unless the store holds newer ones; returns the fields written."""
        args: list[bytes | str | int] = [event_time_ms]
        for name, stored in values.items():
            args.extend((name, _encode(stored)))
        try:
            async with self.breaker.guard():
                written = await self._compare_and_set(keys=[self.key(entity, entity_id)], args=args)
        except (RedisError, OSError, BreakerOpen) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [w.decode() if isinstance(w, bytes) else str(w) for w in written]

    async def ping(self) -> None:
        """Raise when Redis does not answer."""
        await self._client.ping()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
