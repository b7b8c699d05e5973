"""The online store: one Redis hash per entity, one field per feature.

Each field holds a msgpack array: the value, its event time and ingest time (epoch
milliseconds) and its lineage, so one ``HMGET`` returns everything a decision needs
to say how fresh a value is and where it came from. Every writer (``/features/push``,
the read-through of fetched values, ``scoregate ingest``, backfill) goes through one
Lua compare-and-set, atomic per entity, which orders values by (event time, sequence): an
older value never overwrites a newer one, a value with the same event time is
ordered by its sequence (a Kafka offset, a database log position), and the same
(event time, sequence) again is a duplicate. A deleted feature is kept as a marker
with its event time, so an older change cannot bring it back; reads see it missing.

Reads are coalesced: the reads of every request made in one turn of the event loop go
to Redis as one pipeline when that turn ends, as ioredis's auto-pipelining does, so a
burst of requests costs Redis and this process one round trip instead of one each.

Connections come from a bounded pool. A pipeline waits for a free connection within its
requests' deadlines, and that wait is not Redis's fault: only the round trip itself runs
under the store's timeout and counts, once per pipeline, for or against the breaker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal, NamedTuple

import hiredis
import msgspec
import redis.asyncio as aioredis
from prometheus_client import Histogram
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from contracts.features import (
    ChangePosition,
    Channel,
    FeatureScalar,
    Lineage,
    StreamPosition,
)
from contracts.registry import OnlineStoreSpec
from gateway.breaker import BreakerOpen, DependencyBreaker
from gateway.deadline import Deadline, DeadlineReached

log = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 1.0
"""Bound of one connection attempt and of one socket read, below the store's own timeout."""


class StoredValue(msgspec.Struct, array_like=True, frozen=True):
    """One feature value as kept in Redis.

    ``event_time_ms`` must stay the second element, ``sequence`` the tenth and
    ``event_id`` the fourteenth: the compare-and-set script reads them. Fields after
    ``transform`` have defaults, so values written before they existed still decode.
    """

    value: FeatureScalar | None
    event_time_ms: int
    ingested_at_ms: int
    lineage_id: str
    kind: str
    source_system: str
    source_ref: str
    schema_version: int | None
    transform: str | None
    sequence: int = 0
    deleted: bool = False
    effective_time_ms: int | None = None
    channel: Channel | None = None
    event_id: str | None = None
    stream: StreamPosition | None = None
    change: ChangePosition | None = None

    def lineage(self, entity: str, entity_id: str) -> Lineage:
        """The full lineage record of this value."""
        return Lineage(
            lineage_id=self.lineage_id,
            kind=(
                "push"
                if self.kind == "push"
                else "reconcile"
                if self.kind == "reconcile"
                else "fallback"
            ),
            source_system=self.source_system,
            source_ref=self.source_ref,
            schema_version=self.schema_version,
            transform=self.transform,
            entity=entity,
            entity_id=entity_id,
            event_time=from_millis(self.event_time_ms),
            ingested_at=from_millis(self.ingested_at_ms),
            effective_time=(
                None if self.effective_time_ms is None else from_millis(self.effective_time_ms)
            ),
            channel=self.channel,
            event_id=self.event_id,
            stream=self.stream,
            change=self.change,
        )


WriteOutcome = Literal["written", "older", "duplicate"]
"""What the compare-and-set did with one feature's value."""

_OUTCOMES: dict[int, WriteOutcome] = {1: "written", 0: "older", 2: "duplicate"}


class EntityWrite(NamedTuple):
    """Values of one entity to write, all of one event (time, sequence and id)."""

    entity: str
    entity_id: str
    event_time_ms: int
    sequence: int
    values: Mapping[str, StoredValue]
    event_id: str = ""


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(StoredValue).decode

# KEYS[k] = the hash of the k-th entity. ARGV holds, per entity in the order of KEYS: its
# event time (ms), sequence, event id ("" for none), the number n of its fields, then n
# field, value pairs. A field is written unless the stored value is newer by (event time,
# sequence). The same event again (the same event time with the same event id, or the
# same sequence) is a duplicate. Returns per entity one code per field, in order: 1
# written, 0 older (kept the newer), 2 duplicate. A script runs atomically, so each
# entity's compare-and-set does. The keys of one call are on one server: the online
# store is one Redis, not a cluster.
_COMPARE_AND_SET = """
local outcomes = {}
local at = 1
for k = 1, #KEYS do
  local key = KEYS[k]
  local event_time = tonumber(ARGV[at])
  local sequence = tonumber(ARGV[at + 1])
  local event_id = ARGV[at + 2]
  local last = at + 3 + 2 * tonumber(ARGV[at + 3])
  local codes = {}
  for i = at + 4, last, 2 do
    local field = ARGV[i]
    local outcome = 1
    local old = redis.call('HGET', key, field)
    if old then
      local ok, decoded = pcall(cmsgpack.unpack, old)
      if ok and type(decoded) == 'table' and tonumber(decoded[2]) ~= nil then
        local old_time = tonumber(decoded[2])
        local old_sequence = tonumber(decoded[10]) or 0
        local same_event = event_id ~= '' and decoded[14] == event_id
        if old_time == event_time and (same_event or old_sequence == sequence) then
          outcome = 2
        elseif old_time > event_time or (old_time == event_time and old_sequence > sequence) then
          outcome = 0
        end
      end
    end
    if outcome == 1 then
      redis.call('HSET', key, field, ARGV[i + 1])
    end
    codes[#codes + 1] = outcome
  end
  outcomes[k] = codes
  at = last + 1
end
return outcomes
"""
_COMPARE_AND_SET_SHA = hashlib.sha1(_COMPARE_AND_SET.encode(), usedforsecurity=False).hexdigest()
_ENTITIES_PER_CALL = 64
"""Entities one script call compare-and-sets: few replies to read, and Redis is never
held by one call for long (about a millisecond)."""


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


_READS_PER_PIPELINE = 128
"""Requests whose reads one pipeline carries at most; more start the next one."""

READS_PER_PIPELINE = Histogram(
    "scoregate_online_store_reads_per_pipeline",
    "Requests whose reads went to Redis in one pipeline.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


class _Pipeline:
    """The reads of the requests of one loop turn, packed, and where their replies go."""

    __slots__ = ("commands", "deadlines", "expires_at", "futures", "spans", "timers")

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.futures: list[asyncio.Future[list[list[bytes | None]]]] = []
        self.spans: list[tuple[int, int]] = []
        self.deadlines: list[float] = []
        self.expires_at = 0.0
        self.timers: list[asyncio.Handle] = []

    def add(
        self, store: OnlineStore, reads: Sequence[EntityRead], expires_at: float
    ) -> asyncio.Future[list[list[bytes | None]]]:
        """Join one request's reads; the future gets their replies, in order."""
        first = len(self.commands)
        for entity, entity_id, names in reads:
            # hiredis's stub types the command as a tuple of one element.
            command = ("HMGET", store.key(entity, entity_id), *names)
            self.commands.append(hiredis.pack_command(command))  # type: ignore[arg-type]
        future: asyncio.Future[list[list[bytes | None]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.futures.append(future)
        self.spans.append((first, len(self.commands)))
        self.deadlines.append(expires_at)
        self.expires_at = max(self.expires_at, expires_at)
        return future

    def bound(self) -> None:
        """Give each request that must stop waiting before the pipeline ends a timer.

        The pipeline itself ends by its latest request's deadline, so that request (a
        lone one, too) needs no timer of its own. When an earlier deadline comes, the
        request is let go a loop turn later, so that a reply this turn polled is read
        first, as :meth:`Deadline.limit` does.
        """
        loop = asyncio.get_running_loop()
        now, loop_now = time.monotonic(), loop.time()
        for future, expires_at in zip(self.futures, self.deadlines, strict=True):
            if expires_at < self.expires_at:
                due = loop_now + expires_at - now
                self.timers.append(loop.call_at(due, loop.call_soon, _let_go, future))

    def answer(self, rows: list[list[bytes | None]]) -> None:
        """Hand each request that still waits its own replies."""
        self._disarm()
        for future, (first, end) in zip(self.futures, self.spans, strict=True):
            if not future.done():
                future.set_result(rows[first:end])

    def fail(self, error: Callable[[], StoreUnavailable]) -> None:
        """Fail every request that still waits, each with an error of its own."""
        self._disarm()
        for future in self.futures:
            if not future.done():
                future.set_exception(error())

    def _disarm(self) -> None:
        for timer in self.timers:
            timer.cancel()


def _let_go(future: asyncio.Future[list[list[bytes | None]]]) -> None:
    """End one request's wait for its pipeline: its own deadline came first."""
    if not future.done():
        future.set_exception(StoreUnavailable("the request's deadline ended the read"))


def _unavailable(exc: BaseException) -> Callable[[], StoreUnavailable]:
    """What a failed pipeline tells each of its requests."""
    if isinstance(exc, DeadlineReached):
        message = "the request's deadline ended the read"
    elif isinstance(exc, TimeoutError):
        message = "no answer within the read timeout"
    elif isinstance(exc, asyncio.CancelledError):
        message = "the online store closed"
    elif isinstance(exc, RedisError | OSError | BreakerOpen):
        message = str(exc)
    else:
        log.error("online store read failed unexpectedly", exc_info=exc)
        message = f"read failed: {exc!r}"

    def error() -> StoreUnavailable:
        unavailable = StoreUnavailable(message)
        unavailable.__cause__ = exc
        return unavailable

    return error


class OnlineStore:
    """Feature values in Redis, read for many entities in one round trip.

    Args:
        client: a Redis client whose pool holds at most ``max_connections``.
        prefix: prefix of every key.
        spec: the registry's timeout and breaker for the store.
        max_connections: commands in flight at once; more wait for a connection.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        spec: OnlineStoreSpec,
        max_connections: int,
    ) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._prefix = prefix
        self._timeout_s = spec.timeout_ms / 1000
        self.breaker = DependencyBreaker("online_store", spec.breaker)
        # One slot per pooled connection, so that the wait for a connection happens
        # here, under the caller's deadline, and never inside the pool under the
        # store's timeout.
        self._slots = asyncio.Semaphore(max_connections)
        self._max_connections = max_connections
        self._pending: _Pipeline | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(
        cls, url: str, prefix: str, spec: OnlineStoreSpec, max_connections: int
    ) -> OnlineStore:
        """Connect (lazily) to the Redis at ``url`` with a pool of ``max_connections``.

        redis-py's own retries are off: a failed read goes to the sources at once,
        and the breaker, not a retry loop, decides when to try Redis again. The pool
        blocks rather than failing when every connection is in use; connections are
        opened only as concurrency needs them.
        """
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(aioredis.Redis.from_pool(pool), prefix, spec, max_connections)

    def key(self, entity: str, entity_id: str) -> str:
        """The hash that holds one entity's features."""
        return f"{self._prefix}:{entity}:{entity_id}"

    async def read(
        self, reads: Sequence[EntityRead], deadline: Deadline
    ) -> list[dict[str, StoredValue]]:
        """Stored values for each entity read, in one round trip.

        Reads of concurrent requests made within one turn of the event loop go to Redis
        together, as one pipeline of HMGETs, as soon as that turn ends: nothing waits
        for more to come, and each request still waits at most one round trip (plus a
        free connection) and no longer than its own deadline.
        """
        if not reads:
            return []
        if deadline.expires_at <= time.monotonic():
            raise StoreUnavailable("the request's deadline ended the read")
        pipeline = self._pending
        if pipeline is None or len(pipeline.futures) >= _READS_PER_PIPELINE:
            pipeline = self._pending = _Pipeline()
            task = asyncio.get_running_loop().create_task(self._send(pipeline))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        rows = await pipeline.add(self, reads, deadline.expires_at)
        return [_present(names, row) for (_, _, names), row in zip(reads, rows, strict=True)]

    async def _send(self, pipeline: _Pipeline) -> None:
        """Send one pipeline of reads and hand each request its replies.

        It starts on the loop's next turn, so every read made in this one has joined
        it. It waits for a connection and runs for as long as its latest request's
        deadline allows; the round trip itself runs under the store's timeout and is
        what the breaker counts, once per pipeline.
        """
        if self._pending is pipeline:
            self._pending = None
        READS_PER_PIPELINE.observe(len(pipeline.futures))
        pipeline.bound()
        deadline = Deadline.until(pipeline.expires_at)
        try:
            async with self.breaker.guard(), deadline.holding(self._slots):
                rows = await self._round_trip(pipeline.commands, deadline)
        except BaseException as exc:
            pipeline.fail(_unavailable(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        pipeline.answer(rows)

    async def _round_trip(
        self, commands: Sequence[bytes], deadline: Deadline
    ) -> list[list[bytes | None]]:
        """The packed commands' replies, from one connection, under the store's timeout.

        Opening a connection (when the pool has none open) is talking to Redis: it
        runs under the store's timeout like the round trip.
        """
        async with deadline.limit(self._timeout_s):
            connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            async with deadline.limit(self._timeout_s):
                await connection.send_packed_command(list(commands))
                return [await connection.read_response() for _ in commands]
        except BaseException:
            # Replies may be left unread on it: it cannot serve another command.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await self._pool.release(connection)

    async def write(
        self,
        entity: str,
        entity_id: str,
        event_time_ms: int,
        values: Mapping[str, StoredValue],
        deadline: Deadline | None = None,
        sequence: int = 0,
    ) -> list[str]:
        """Write values unless the store holds newer ones; returns the fields written.

        The write waits for a connection until ``deadline``, or, without one, as long
        as it would wait on a Redis socket.
        """
        wait = Deadline(SOCKET_TIMEOUT_S) if deadline is None else deadline
        batch = [EntityWrite(entity, entity_id, event_time_ms, sequence, values)]
        [outcomes] = await self.write_many(batch, wait)
        return [name for name, outcome in outcomes.items() if outcome == "written"]

    async def write_many(
        self, writes: Sequence[EntityWrite], deadline: Deadline
    ) -> list[dict[str, WriteOutcome]]:
        """Compare-and-set the values of many entities in one round trip.

        Returns the outcome of every feature, per write, in order. Each entity's
        write is atomic on its own; a script call takes several entities and the calls
        go in one pipeline, which only saves round trips: it is not a transaction
        across them.
        """
        if not writes:
            return []
        calls = [
            self._call(writes[first : first + _ENTITIES_PER_CALL])
            for first in range(0, len(writes), _ENTITIES_PER_CALL)
        ]
        try:
            async with self.breaker.guard(), deadline.holding(self._slots):
                replies = await self._evaluate(calls)
        except DeadlineReached as exc:
            raise StoreUnavailable("no Redis connection was free in time") from exc
        except (RedisError, OSError, BreakerOpen) as exc:
            raise StoreUnavailable(str(exc)) from exc
        codes = [entity for reply in replies for entity in reply]
        return [
            {name: _OUTCOMES[int(code)] for name, code in zip(write.values, found, strict=True)}
            for write, found in zip(writes, codes, strict=True)
        ]

    def _call(self, writes: Sequence[EntityWrite]) -> bytes:
        """One script call over ``writes``, packed for the wire."""
        keys = [self.key(write.entity, write.entity_id) for write in writes]
        args: list[bytes | str | int] = ["EVALSHA", _COMPARE_AND_SET_SHA, len(keys), *keys]
        for write in writes:
            args += (write.event_time_ms, write.sequence, write.event_id, len(write.values))
            for name, stored in write.values.items():
                args += (name, _encode(stored))
        # hiredis's stub types the command as a tuple of one element.
        packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
        return packed

    async def _evaluate(self, calls: Sequence[bytes]) -> list[list[list[int]]]:
        """Send the script calls in one pipeline and read every reply.

        Redis that lost the script (restarted, or flushed its scripts) answers NOSCRIPT:
        the script is loaded and those calls alone are sent again. Any other error
        reply fails the whole write, after every reply is read.
        """
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            replies = await _exchange(connection, calls)
            lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if lost:
                await connection.send_command("SCRIPT", "LOAD", _COMPARE_AND_SET)
                await connection.read_response()
                again = await _exchange(connection, [calls[i] for i in lost])
                for i, reply in zip(lost, again, strict=True):
                    replies[i] = reply
        except BaseException:
            # Replies may be left unread on it: it cannot serve another command.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await self._pool.release(connection)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies  # type: ignore[return-value]

    async def open(self) -> None:
        """Open the pool's connections now, at start-up.

        A first burst then finds them open: opening many at once while the process is
        busy with that burst can outlast the store's timeout through no fault of Redis.
        A Redis that is down is no reason not to start: the reads will say so.
        """
        opened = await asyncio.gather(
            *(self._pool.get_connection() for _ in range(self._max_connections)),  # type: ignore[no-untyped-call]
            return_exceptions=True,
        )
        failures = [result for result in opened if isinstance(result, BaseException)]
        for result in opened:
            if not isinstance(result, BaseException):
                await self._pool.release(result)
        if failures:
            log.warning("could not open online store connections at start-up: %s", failures[0])

    async def ping(self) -> None:
        """Raise when Redis does not answer (the caller bounds the wait)."""
        async with self._slots:
            await self._client.ping()

    async def close(self) -> None:
        """Let the reads in flight end, then close the connection pool."""
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self._client.aclose()


async def _exchange(
    connection: aioredis.Connection, calls: Sequence[bytes]
) -> list[list[list[int]] | ResponseError]:
    """Send packed commands at once and read their replies; an error reply is returned."""
    await connection.send_packed_command(list(calls))
    replies: list[list[list[int]] | ResponseError] = []
    for _ in calls:
        try:
            replies.append(await connection.read_response())
        except ResponseError as exc:
            # The reply was read whole: the connection is still in step.
            replies.append(exc)
    return replies


def _present(names: Sequence[str], row: Sequence[bytes | None]) -> dict[str, StoredValue]:
    """The stored values of one entity's read; deleted features are missing."""
    found = {}
    for name, raw in zip(names, row, strict=True):
        if raw is not None:
            stored = _decode(raw)
            if not stored.deleted:
                found[name] = stored
    return found
