"""Shared fixtures: real PostgreSQL, Redis, a Kafka-protocol broker, the sample source
and model servers as processes, and a gateway app wired to all of them.

Each test that needs a service gets its own database, Redis key prefix and topic,
so tests run in any order. The broker is started once per session on a free port.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import aiohttp
import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
import uvicorn
from aiokafka import AIOKafkaConsumer
from litestar import Litestar

from gateway.app import create_app
from gateway.auth import key_from_secret
from gateway.settings import GatewaySettings
from scoregate_dev.broker import LocalBroker, free_port, wait_for_port
from writeback.config import WritebackConfig

# One key per role, a second scorer (another caller) and an auditor with the pii scope.
KEYS = {
    "scorer": "sk-test-scorer-5e1c0d9a",
    "scorer2": "sk-test-scorer-two-77b2",
    "feature_writer": "sk-test-feature-writer-4b07",
    "auditor": "sk-test-auditor-0a4471",
    "auditor_pii": "sk-test-auditor-pii-93c1",
    "operator": "sk-test-operator-c2de55",
    "admin": "sk-test-admin-f00dfeed",
}
API_KEYS = (
    key_from_secret(KEYS["scorer"], ["scorer"]),
    key_from_secret(KEYS["scorer2"], ["scorer"]),
    key_from_secret(KEYS["feature_writer"], ["feature_writer"]),
    key_from_secret(KEYS["auditor"], ["auditor"]),
    key_from_secret(KEYS["auditor_pii"], ["auditor"], ["pii"]),
    key_from_secret(KEYS["operator"], ["operator"]),
    key_from_secret(KEYS["admin"], ["admin"]),
)


def bearer(who: str) -> dict[str, str]:
    """The Authorization header of one of the test keys."""
    return {"Authorization": f"Bearer {KEYS[who]}"}


PG_ADMIN_DSN = os.environ.get(
    "SCOREGATE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SCOREGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def pg_admin(sql: str) -> None:
    """Run one statement as the PostgreSQL superuser, outside any test database."""
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def registry_variant(
    settings: GatewaySettings, path: Path, *edits: tuple[str, str]
) -> GatewaySettings:
    """``settings`` with a copy of the test registry edited by (old, new) replacements."""
    text = settings.registry_path.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return msgspec.structs.replace(settings, registry_path=path)


def roomy() -> list[tuple[str, str]]:
    """Edits that give sources and the model a minute: held replies and a loaded
    machine cost time, never a timeout."""
    return [
        ("timeout_ms = 150", "timeout_ms = 60000"),
        ("timeout_ms = 300\n", "timeout_ms = 60000\ndeadline_ms = 120000\n"),
    ]


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


SAMPLE_REGISTRY = Path(__file__).parents[1] / "sample" / "scoregate_dev" / "sample_registry.toml"


@dataclass
class SampleServers:
    """The sample source APIs and model server, running as child processes."""

    sources_url: str
    model_url: str
    http: aiohttp.ClientSession

    async def fault_source(self, source: str, mode: str, **extra: int) -> None:
        body = {"mode": mode, **extra}
        async with self.http.put(f"{self.sources_url}/_faults/{source}", json=body) as resp:
            assert resp.status == 200, await resp.text()

    async def fault_model(self, mode: str, **extra: int) -> None:
        async with self.http.put(f"{self.model_url}/_faults", json={"mode": mode, **extra}) as r:
            assert r.status == 200, await r.text()

    async def source_calls(self) -> dict[str, int]:
        async with self.http.get(f"{self.sources_url}/_stats") as resp:
            calls: dict[str, int] = (await resp.json())["calls"]
            return calls

    async def source_record(self, path: str) -> dict[str, object]:
        async with self.http.get(f"{self.sources_url}{path}") as resp:
            record: dict[str, object] = await resp.json()
            return record

    async def reset(self) -> None:
        for url in (f"{self.sources_url}/_faults", f"{self.model_url}/_faults"):
            async with self.http.delete(url) as resp:
                assert resp.status < 300
        for url in (f"{self.sources_url}/_stats", f"{self.model_url}/_stats"):
            async with self.http.delete(url) as resp:
                assert resp.status < 300


async def _spawn(module: str, port: int, *args: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, "--port", str(port), *args
    )
    await wait_for_port("127.0.0.1", port)
    return process


@pytest.fixture(scope="session")
async def sample_servers() -> AsyncIterator[SampleServers]:
    """Sample sources (no added latency) and the sample model, for the whole session."""
    sources_port, model_port = free_port(), free_port()
    sources = await _spawn("scoregate_dev.sample_sources", sources_port, "--latency-scale", "0")
    model = await _spawn("scoregate_dev.sample_model", model_port)
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


@asynccontextmanager
async def serve(app: Litestar, who: str = "admin") -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app`` on a real HTTP server (uvicorn, in this event loop) and a client for it.

    Requests from the client are truly concurrent, as they are in production; they
    carry the key of ``who`` unless a request says otherwise.
    """
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=10, limits=limits, headers=bearer(who)
    ) as http:
        yield http
    server.should_exit = True
    await task


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


async def consume(bootstrap: str, topic: str, expected: int, timeout: float = 15.0) -> list[Any]:
    """Every record of ``topic`` once ``expected`` arrived (and a moment more, to see extras)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < expected:
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    records.extend(batch)
        batches = await consumer.getmany(timeout_ms=500)
        for batch in batches.values():
            records.extend(batch)
    finally:
        await consumer.stop()
    return records
