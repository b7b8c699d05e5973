"""``scoregate dev``: the whole stack on one machine.

PostgreSQL and Redis are the local servers; the broker (Tansu), the sample source
APIs, the sample model server and the gateway run as child processes of this one
and stop with it.
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
from writeback import ensure_database, migrate

SAMPLE_REGISTRY = Path(__file__).with_name("sample_registry.toml")
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/scoregate"


class DevStack:
    """Starts and stops the local stack; ``url`` is the gateway's base URL once up.

    ``workers`` is passed to ``scoregate serve --workers``; ``gateway_cpus`` (a CPU list
    as ``taskset -c`` takes it, e.g. ``"0"``) pins the gateway and its workers there.
    """

    def __init__(
        self,
        port: int = 8000,
        customers: int = 200,
        workers: int = 1,
        gateway_cpus: str | None = None,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.customers = customers
        self.workers = workers
        self.gateway_cpus = gateway_cpus
        self.pids: dict[str, int] = {}
        """Process id of each child by name: ``sources``, ``model``, ``gateway``."""
        self.env: dict[str, str] = {}
        self.keys: dict[Role, str] = {}
        self.sources_url = ""
        self.model_url = ""
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
        await self._wait_ready(limit_s=20)

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
        """Push sample features: most customers fresh, some stale, some missing."""
        rng = random.Random(7)  # noqa: S311 - sample data, not security
        now = datetime.now(UTC)
        pushed = 0
        async with aiohttp.ClientSession() as session:
            for i in range(1, self.customers + 1):
                # Every tenth customer is left out (served from the source on first
                # use); every seventh is an hour old (stale for 30-minute features).
                if i % 10 == 0:
                    continue
                age = timedelta(hours=1) if i % 7 == 0 else timedelta(seconds=rng.uniform(1, 20))
                features = {
                    "txn_count_30m": rng.randint(0, 6),
                    "txn_amount_sum_24h": round(rng.lognormvariate(4, 1), 2),
                    "distinct_merchants_7d": rng.randint(1, 12),
                    "account_age_days": rng.randint(5, 3000),
                    "kyc_level": rng.choice([1, 2, 2, 3, 3, 3]),
                    "country_risk": round(rng.betavariate(2, 8), 3),
                }
                pushed += await self._push(
                    session, {"customer_id": f"c-{i}"}, features, now - age, f"cdc:{i}"
                )
            for m in range(1, 21):
                features_m = {"chargeback_rate_90d": round(rng.uniform(0, 0.05), 4)}
                pushed += await self._push(
                    session, {"merchant_id": f"m-{m}"}, features_m, now, f"batch:m{m}"
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
        """Stop every child process and the broker."""
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
