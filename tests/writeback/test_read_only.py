"""A demoted primary heals by itself in the background work too, with no request to see it.

The demotion is simulated as a failover leaves it: the database turns read-only for new
sessions (``default_transaction_read_only``) and every open session is terminated, so
the pool reconnects into read-only sessions. Once the database is writable again, only
new connections can write: whoever meets the refusal must drop the pool's connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import asyncpg
import pytest

from scoregate_dev.broker import LocalBroker
from tests.support.records import commit, make_record
from tests.support.services import pg_admin
from writeback.audit_store import AuditStore
from writeback.config import WritebackConfig
from writeback.kafka import KafkaPublisher
from writeback.relay import OutboxRelay

pytestmark = pytest.mark.services


@pytest.fixture
def config(database_url: str, broker: LocalBroker, topic: str) -> WritebackConfig:
    return WritebackConfig(
        database_url=database_url,
        kafka_bootstrap=broker.bootstrap,
        topic=topic,
        relay_backoff_ms=20,
        relay_max_backoff_ms=200,
        relay_poll_interval_ms=50,
        publish_timeout_ms=5000,
    )


@pytest.fixture
async def demotion(database_url: str) -> AsyncIterator[str]:
    """The test database's name; it is writable again afterwards whatever happened."""
    name = database_url.rpartition("/")[2]
    yield name
    await pg_admin(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')


async def test_the_relay_reconnects_its_pool_after_a_demoted_primary_is_writable_again(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    demotion: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await commit(store, make_record("c-ro"))
    await pg_admin(f'ALTER DATABASE "{demotion}" SET default_transaction_read_only = on')
    await pg_admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{demotion}' AND pid <> pg_backend_pid()"
    )
    publisher = KafkaPublisher(config)
    relay = OutboxRelay(pool, publisher, config)
    caplog.set_level(logging.WARNING, logger="writeback.relay")
    await relay.start()
    try:
        async with asyncio.timeout(30):
            while not any("read-only" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)
        await pg_admin(f'ALTER DATABASE "{demotion}" RESET default_transaction_read_only')
        async with asyncio.timeout(30):
            while await pool.fetchval("SELECT status FROM outbox") != "delivered":
                await asyncio.sleep(0.05)
    finally:
        await relay.stop()
        await publisher.stop()
