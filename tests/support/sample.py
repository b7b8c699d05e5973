"""The sample source APIs and model server as child processes, and their fault switches."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from scoregate_dev.broker import wait_for_port

SAMPLE_REGISTRY = Path(__file__).parents[2] / "sample" / "scoregate_dev" / "sample_registry.toml"


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


async def spawn(module: str, port: int, *args: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, "--port", str(port), *args
    )
    await wait_for_port("127.0.0.1", port)
    return process
