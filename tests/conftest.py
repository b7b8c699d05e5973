"""Shared fixtures: real PostgreSQL, Redis, a Kafka-protocol broker, the sample source
and model servers as processes, and a gateway app wired to all of them.

Each test that needs a service gets its own database, Redis key prefix and topic,
so tests run in any order. The broker is started once per session on a free port.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from string import Template

import aiohttp
import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from gateway.app import create_app
from gateway.settings import GatewaySettings
from scoregate_dev.broker import LocalBroker, free_port
from tests.support.gateway import serve
from tests.support.keys import API_KEYS
from tests.support.sample import SAMPLE_REGISTRY, SampleServers, spawn
from tests.support.services import PG_ADMIN_DSN, REDIS_URL
from writeback.config import WritebackConfig


def _dsn_for(database: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="session")
async def broker() -> AsyncIterator[LocalBroker]:
    """A Tansu broker for the whole session (topics are per test)."""
    local = LocalBroker()
    await local.start()
    yield local
    await local.stop()


@pytest.fixture
def topic() -> str:
    """A fresh outcome topic name for one test."""
    return f"decision-outcomes-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    from writeback.schema import migrate

    name = f"sg_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = _dsn_for(name)
    await migrate(dsn)
    yield dsn
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def redis_url() -> str:
    """The Redis server tests use."""
    return REDIS_URL


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of one test's own; its keys are deleted afterwards."""
    prefix = f"sgt{uuid.uuid4().hex[:10]}"
    yield prefix
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
async def sample_servers() -> AsyncIterator[SampleServers]:
    """Sample sources (no added latency) and the sample model, for the whole session."""
    sources_port, model_port = free_port(), free_port()
    sources = await spawn("scoregate_dev.sample_sources", sources_port, "--latency-scale", "0")
    model = await spawn("scoregate_dev.sample_model", model_port)
    async with aiohttp.ClientSession() as http:
        yield SampleServers(
            sources_url=f"http://127.0.0.1:{sources_port}",
            model_url=f"http://127.0.0.1:{model_port}",
            http=http,
        )
    for process in (sources, model):
        process.terminate()
        await process.wait()


@pytest.fixture
async def servers(sample_servers: SampleServers) -> AsyncIterator[SampleServers]:
    """The sample servers with no faults and zeroed counters, per test."""
    await sample_servers.reset()
    yield sample_servers
    await sample_servers.reset()


@pytest.fixture
def registry_path(tmp_path: Path, servers: SampleServers) -> Path:
    """The sample registry pointing at this session's sample servers."""
    path = tmp_path / "registry.toml"
    path.write_text(
        Template(SAMPLE_REGISTRY.read_text()).substitute(
            sources_url=servers.sources_url, model_url=servers.model_url
        )
    )
    return path


@pytest.fixture
def settings(
    registry_path: Path,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    broker: LocalBroker,
    topic: str,
) -> GatewaySettings:
    """Gateway settings for one test: its own database, key prefix and topic."""
    return GatewaySettings(
        registry_path=registry_path,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        writeback=WritebackConfig(
            database_url=database_url,
            kafka_bootstrap=broker.bootstrap,
            topic=topic,
            relay_poll_interval_ms=100,
        ),
        api_keys=API_KEYS,
        pii_key=b"test-pii-key",
    )


@pytest.fixture
async def client(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """A running gateway (lifespan included) behind a real HTTP server, and a client."""
    async with serve(create_app(settings)) as http:
        yield http


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's database, for checking what was committed."""
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A direct Redis connection, for checking what the online store holds."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
