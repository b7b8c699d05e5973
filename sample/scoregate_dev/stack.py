"""``scoregate dev``: the whole stack on one machine.

PostgreSQL and Redis are the local servers; the broker (Tansu), the sample source
APIs, the sample model server, the gateway and an ingest worker run as child
processes of this one and stop with it. The sample operational system
(:mod:`scoregate_dev.operational`) runs in this process and keeps the streamed
customers' and the merchants' features changing on the broker, so the ingest worker
keeps them fresh in Redis the way a deployment's streams and change feeds would.

Which customers are where, out of ``c-1`` ... ``c-N``:

- every tenth is in no stream and never pushed: served from its source on first use;
- every seventh (of the others) is pushed once through ``POST /features/push`` an
  hour old: stale for its 30-minute features, refreshed from its source;
- the rest (:func:`streamed_customers`) come through the feature-update stream, and
  every merchant through the merchant risk table's change events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template
from typing import Any

import aiohttp

from gateway.auth import ROLES, Role, key_from_secret, new_key, parse_dev_keys
from scoregate_dev.broker import LocalBroker, free_port, wait_for_port
from scoregate_dev.operational import (
    OperationalSystem,
    create_topics,
    load_for_streams,
    until_ingested,
)
from writeback import ensure_database, migrate

SAMPLE_REGISTRY = Path(__file__).with_name("sample_registry.toml")
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/scoregate"
MERCHANTS = 20
"""Merchants ``m-1`` ... ``m-20``: the rows of the sample merchant risk table."""
STREAM_PARTITIONS = 4
"""Partitions of the stream topics the dev stack creates."""


def streamed_customers(customers: int) -> list[int]:
    """The customers whose features the feature-update stream keeps fresh."""
    return [i for i in range(1, customers + 1) if i % 10 != 0 and i % 7 != 0]


def stale_customers(customers: int) -> list[int]:
    """The customers the stack pushes once, an hour old (every seventh, not tenth)."""
    return [i for i in range(1, customers + 1) if i % 7 == 0 and i % 10 != 0]


class DevStack:
    """Starts and stops the local stack; ``url`` is the gateway's base URL once up.

    Args:
        port: the gateway's port.
        customers: customers ``c-1`` ... ``c-N`` in the sample.
        workers: passed to ``scoregate serve --workers``.
        gateway_cpus: a CPU list as ``taskset -c`` takes it (e.g. ``"0"``): the gateway
            and its workers run there.
        stream_rate: steps a second of the operational system after its snapshot;
            by default enough to update each streamed customer every ten seconds or
            so (at least 20).
    """

    def __init__(
        self,
        port: int = 8000,
        customers: int = 200,
        workers: int = 1,
        gateway_cpus: str | None = None,
        stream_rate: float | None = None,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.customers = customers
        self.workers = workers
        self.gateway_cpus = gateway_cpus
        self.stream_rate = stream_rate if stream_rate is not None else max(20.0, customers / 10)
        self.pids: dict[str, int] = {}
        """Process id of each child by name: ``sources``, ``model``, ``gateway``, ``ingest``."""
        self.env: dict[str, str] = {}
        self.keys: dict[Role, str] = {}
        self.sources_url = ""
        self.model_url = ""
        self.operational: OperationalSystem | None = None
        """The sample operational system, once started (None if the registry has no streams)."""
        self._broker: LocalBroker | None = None
        self._children: list[asyncio.subprocess.Process] = []
        self._workdir = Path(tempfile.mkdtemp(prefix="scoregate-dev-"))

    async def start(self) -> None:
        """Bring everything up and wait until the gateway is ready."""
        env = dict(os.environ)
        env.setdefault("SCOREGATE_DATABASE_URL", DEFAULT_DATABASE_URL)
        env.setdefault("SCOREGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
        database_url = env["SCOREGATE_DATABASE_URL"]
        await ensure_database(database_url)
        await migrate(database_url)

        if "SCOREGATE_KAFKA_BOOTSTRAP" not in env:
            self._broker = LocalBroker(log_path=self._workdir / "broker.log")
            await self._broker.start()
            env["SCOREGATE_KAFKA_BOOTSTRAP"] = self._broker.bootstrap

        sources_port, model_port = free_port(), free_port()
        self.sources_url = f"http://127.0.0.1:{sources_port}"
        self.model_url = f"http://127.0.0.1:{model_port}"
        await self._spawn("sources", "scoregate_dev.sample_sources", "--port", str(sources_port))
        await self._spawn("model", "scoregate_dev.sample_model", "--port", str(model_port))
        if "SCOREGATE_REGISTRY" not in env:
            registry = self._workdir / "registry.toml"
            registry.write_text(
                Template(SAMPLE_REGISTRY.read_text()).substitute(
                    sources_url=self.sources_url, model_url=self.model_url
                )
            )
            env["SCOREGATE_REGISTRY"] = str(registry)
        await wait_for_port("127.0.0.1", sources_port)
        await wait_for_port("127.0.0.1", model_port)
        self.keys = self._keys(env)
        self.env = env
        streams = load_for_streams(Path(env["SCOREGATE_REGISTRY"]))
        if streams.file.streams:
            env.setdefault("SCOREGATE_INGEST_METRICS_PORT", str(free_port()))
            await self._spawn("ingest", "gateway.cli", "ingest", env=env)
        prefix = ["taskset", "-c", self.gateway_cpus] if self.gateway_cpus else []
        await self._spawn(
            "gateway",
            "gateway.cli",
            "serve",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            env=env,
            prefix=prefix,
        )
        if streams.file.streams:
            bootstrap = env["SCOREGATE_KAFKA_BOOTSTRAP"]
            system = OperationalSystem(
                bootstrap,
                streams,
                [f"c-{i}" for i in streamed_customers(self.customers)],
                [f"m-{m}" for m in range(1, MERCHANTS + 1)],
                self.stream_rate,
            )
            await create_topics(bootstrap, system.events.topics, STREAM_PARTITIONS)
            await system.start()
            self.operational = system
        await self._wait_ready(limit_s=20)
        if self.operational is not None:
            await self._wait_ingested(self.operational, limit_s=60)

    async def _wait_ingested(self, system: OperationalSystem, limit_s: float) -> None:
        """Wait until the ingest worker has written the operational system's snapshot."""
        group = self.env.get("SCOREGATE_INGEST_GROUP", "scoregate-ingest")
        try:
            await until_ingested(
                self.env["SCOREGATE_KAFKA_BOOTSTRAP"], group, system.positions, limit_s
            )
        except TimeoutError:
            raise RuntimeError(
                f"the ingest worker did not take the streams' snapshot within {limit_s:g} s;"
                f" logs in {self._workdir}"
            ) from None

    @property
    def ingest_metrics_url(self) -> str | None:
        """Where the ingest worker serves its metrics, once it runs."""
        port = self.env.get("SCOREGATE_INGEST_METRICS_PORT")
        return f"http://127.0.0.1:{port}/metrics" if port and "ingest" in self.pids else None

    @staticmethod
    def _keys(env: dict[str, str]) -> dict[Role, str]:
        """Keys per role: ``SCOREGATE_DEV_KEYS`` if set, else new ones; configured in env."""
        given = parse_dev_keys(env.get("SCOREGATE_DEV_KEYS", ""))
        keys: dict[Role, str] = {role: given.get(role) or new_key(role)[0] for role in ROLES}
        if "SCOREGATE_API_KEYS" not in env:
            entries = [
                key_from_secret(secret, [role], ["pii"] if role == "admin" else []).line()
                for role, secret in keys.items()
            ]
            env["SCOREGATE_API_KEYS"] = ",".join(entries)
        env.setdefault("SCOREGATE_PII_KEY", secrets.token_hex(16))
        return keys

    def headers(self, role: Role) -> dict[str, str]:
        """The Authorization header of the stack's key for ``role``."""
        return {"Authorization": f"Bearer {self.keys[role]}"}

    async def _spawn(
        self,
        name: str,
        module: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> asyncio.subprocess.Process:
        log = (self._workdir / f"{name}.log").open("ab")
        try:
            child = await asyncio.create_subprocess_exec(
                *prefix, sys.executable, "-m", module, *args, stdout=log, stderr=log, env=env
            )
        finally:
            log.close()
        self._children.append(child)
        self.pids[name] = child.pid
        return child

    async def _wait_ready(self, limit_s: float) -> None:
        last = "no answer"
        async with aiohttp.ClientSession() as session:
            try:
                async with asyncio.timeout(limit_s):
                    while True:
                        with contextlib.suppress(aiohttp.ClientError):
                            async with session.get(f"{self.url}/health/ready") as response:
                                if response.status == 200:
                                    return
                                last = await response.text()
                        if any(child.returncode is not None for child in self._children):
                            break
                        await asyncio.sleep(0.2)
            except TimeoutError:
                pass
        raise RuntimeError(f"the gateway did not become ready ({last}); logs in {self._workdir}")

    async def seed(self) -> int:
        """Push the stale customers' features an hour old through ``POST /features/push``.

        The streamed customers and the merchants are the ingest worker's; every tenth
        customer is left out, to be served from its source on first use.
        """
        rng = random.Random(7)  # noqa: S311 - sample data, not security
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        pushed = 0
        async with aiohttp.ClientSession() as session:
            for i in stale_customers(self.customers):
                features = {
                    "txn_count_30m": rng.randint(0, 6),
                    "txn_amount_sum_24h": round(rng.lognormvariate(4, 1), 2),
                    "distinct_merchants_7d": rng.randint(1, 12),
                    "account_age_days": rng.randint(5, 3000),
                    "kyc_level": rng.choice([1, 2, 2, 3, 3, 3]),
                    "country_risk": round(rng.betavariate(2, 8), 3),
                }
                pushed += await self._push(
                    session, {"customer_id": f"c-{i}"}, features, an_hour_ago, f"batch:{i}"
                )
        return pushed

    async def _push(
        self,
        session: aiohttp.ClientSession,
        entities: dict[str, str],
        features: dict[str, Any],
        event_time: datetime,
        ref: str,
    ) -> int:
        body = {
            "entities": entities,
            "features": features,
            "event_time": event_time.isoformat(),
            "lineage": {
                "source_system": "sample-pipeline",
                "source_ref": ref,
                "schema_version": 1,
                "transform": "sample_aggregates_v1",
            },
        }
        async with session.post(
            f"{self.url}/features/push", json=body, headers=self.headers("feature_writer")
        ) as response:
            response.raise_for_status()
        return 1

    async def stop(self) -> None:
        """Stop the operational system, every child process and the broker."""
        if self.operational is not None:
            await self.operational.stop()
            self.operational = None
        for child in reversed(self._children):
            if child.returncode is None:
                child.terminate()
        for child in self._children:
            try:
                async with asyncio.timeout(10):
                    await child.wait()
            except TimeoutError:
                child.kill()
                await child.wait()
        if self._broker is not None:
            await self._broker.stop()

    @property
    def gateway_pid(self) -> int | None:
        """The gateway process's id, once it runs (``taskset`` execs it: the same pid)."""
        return self.pids.get("gateway")

    @property
    def logs(self) -> Path:
        """Where the children's logs are."""
        return self._workdir
