"""Reads of concurrent requests go to Redis together: one pipeline per loop turn.

Every test reads through a real Redis. Pipelines are counted on the connection: each
``send_packed_command`` is one write of a pipeline to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from contracts.registry import BreakerPolicy, OnlineStoreSpec
from gateway.deadline import Deadline
from gateway.features.online_store import (
    OnlineStore,
    StoredValue,
    StoreUnavailable,
)
from scoregate_dev.broker import free_port

pytestmark = pytest.mark.services

FEATURES = ("txn_count_30m", "avg_amount_7d")


class CountingConnection(aioredis.Connection):
    """A Redis connection that counts the pipelines written to it."""

    sent = 0

    async def send_packed_command(self, command: object, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)  # type: ignore[arg-type]


def store_at(url: str, prefix: str, connections: int = 4, timeout_ms: int = 30_000) -> OnlineStore:
    """An online store whose connections count their pipelines."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=None, connection_class=CountingConnection
    )
    spec = OnlineStoreSpec(
        timeout_ms=timeout_ms, breaker=BreakerPolicy(fail_max=1000, reset_timeout_ms=60_000)
    )
    return OnlineStore(aioredis.Redis.from_pool(pool), prefix, spec, connections)


def value(number: int) -> StoredValue:
    return StoredValue(number, 1_000 + number, 2_000, f"lin_{number}", "push", "t", "r", 1, None)


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[OnlineStore]:
    online = store_at(redis_url, redis_prefix)
    for number in range(200):
        values = {"txn_count_30m": value(number), "avg_amount_7d": value(number + 1000)}
        await online.write("customer", f"c-{number}", 1_000 + number, values)
    await online.open()
    CountingConnection.sent = 0
    yield online
    await online.close()


def read_of(number: int) -> list[tuple[str, str, tuple[str, ...]]]:
    return [("customer", f"c-{number}", FEATURES)]


async def test_concurrent_reads_go_as_one_pipeline_and_each_gets_its_own_values(
    store: OnlineStore,
) -> None:
    rows = await asyncio.gather(*(store.read(read_of(n), Deadline(30)) for n in range(20)))

    assert CountingConnection.sent == 1
    for number, [found] in enumerate(rows):
        assert found["txn_count_30m"].value == number
        assert found["avg_amount_7d"].value == number + 1000
        assert found["txn_count_30m"].lineage_id == f"lin_{number}"


async def test_a_request_reading_several_entities_gets_them_in_order(store: OnlineStore) -> None:
    several = [("customer", f"c-{n}", FEATURES) for n in (7, 3, 150)]
    first, second = await asyncio.gather(
        store.read(several, Deadline(30)), store.read(read_of(9), Deadline(30))
    )

    assert [found["txn_count_30m"].value for found in first] == [7, 3, 150]
    assert second[0]["txn_count_30m"].value == 9
    assert CountingConnection.sent == 1


async def test_reads_awaited_one_after_another_add_no_wait(store: OnlineStore) -> None:
    for number in range(5):
        [found] = await store.read(read_of(number), Deadline(30))
        assert found["txn_count_30m"].value == number

    assert CountingConnection.sent == 5


async def test_a_pipeline_carries_at_most_128_requests(store: OnlineStore) -> None:
    rows = await asyncio.gather(*(store.read(read_of(n % 200), Deadline(30)) for n in range(300)))

    assert CountingConnection.sent == 3
    assert [found["txn_count_30m"].value for [found] in rows] == [n % 200 for n in range(300)]


async def test_missing_entities_and_features_read_as_missing(store: OnlineStore) -> None:
    nobody, somebody = await asyncio.gather(
        store.read([("customer", "c-nobody", FEATURES)], Deadline(30)),
        store.read([("customer", "c-1", ("txn_count_30m", "not_stored"))], Deadline(30)),
    )

    assert nobody == [{}]
    assert set(somebody[0]) == {"txn_count_30m"}


class HeldReplies:
    """A TCP proxy to Redis that holds Redis's replies until released: a slow Redis."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target_port = target_port
        self.flowing = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HeldReplies:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        for source, sink, held in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pipe(source, sink, held))
            self._tasks.add(task)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, held: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                if held:
                    await self.flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.transport.abort()


async def test_each_request_keeps_its_own_deadline_and_the_pipeline_serves_the_rest(
    store: OnlineStore, redis_url: str, redis_prefix: str
) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with HeldReplies(port) as proxy:
        slow = store_at(f"redis://127.0.0.1:{proxy.port}/0", redis_prefix, connections=1)
        proxy.flowing.set()
        await slow.open()  # the handshake's commands are not reads
        proxy.flowing.clear()
        CountingConnection.sent = 0
        hurried = asyncio.create_task(slow.read(read_of(1), Deadline(0.2)))
        patient = asyncio.create_task(slow.read(read_of(2), Deadline(60)))

        with pytest.raises(StoreUnavailable, match="deadline"):
            await hurried
        assert not patient.done()
        proxy.flowing.set()
        [found] = await patient

        assert found["txn_count_30m"].value == 2
        assert CountingConnection.sent == 1
        # The request's own deadline is no failure of Redis.
        assert slow.breaker.failures == 0
        await slow.close()


async def test_a_failed_pipeline_fails_its_requests_and_counts_once_on_the_breaker(
    redis_prefix: str,
) -> None:
    down = store_at(f"redis://127.0.0.1:{free_port()}/0", redis_prefix)

    outcomes = await asyncio.gather(
        *(down.read(read_of(n), Deadline(30)) for n in range(10)), return_exceptions=True
    )

    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
    assert down.breaker.failures == 1
    await down.close()
