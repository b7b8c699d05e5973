"""The ``scoregate`` command as a real process: start-up checks and the standalone relay."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from scoregate_dev.broker import LocalBroker
from tests.support.gateway import serve
from tests.support.scoring import body, seed
from tests.support.services import consume


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode or 0, output.decode()


async def test_bad_registry_stops_start_up_naming_the_field(
    registry_path: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(registry_path.read_text().replace('dtype = "int64"', 'dtype = "int"', 1))
    code, output = await run_cli("serve", "--port", "1", env={"SCOREGATE_REGISTRY": str(bad)})
    assert code == 2
    assert str(bad) in output
    assert "$.features[0].dtype" in output


async def test_missing_registry_setting_stops_start_up() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SCOREGATE_REGISTRY"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode != 0
    assert b"SCOREGATE_REGISTRY" in output


@pytest.mark.services
async def test_standalone_relay_publishes_what_the_gateway_committed(
    settings: GatewaySettings, broker: LocalBroker, topic: str
) -> None:
    quiet = msgspec.structs.replace(settings, run_relay=False)
    async with serve(create_app(quiet)) as client:
        await seed(client, "c-30", "m-30", timedelta(seconds=1))
        answer = (await client.post("/score", json=body("c-30", "m-30"))).json()
        record = (await client.get(f"/decisions/{answer['decision_id']}")).json()
        assert record["writeback"][0]["status"] == "pending"

        env = {
            "SCOREGATE_REGISTRY": str(settings.registry_path),
            "SCOREGATE_DATABASE_URL": settings.writeback.database_url,
            "SCOREGATE_KAFKA_BOOTSTRAP": broker.bootstrap,
            "SCOREGATE_TOPIC": topic,
        }
        relay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "relay", env={**os.environ, **env}
        )
        try:
            records = await consume(broker.bootstrap, topic, expected=1)
        finally:
            relay.terminate()
            assert await asyncio.wait_for(relay.wait(), timeout=15) == 0
        assert len(records) == 1
        assert dict(records[0].headers)["ce_subject"].decode() == answer["decision_id"]
        record = (await client.get(f"/decisions/{answer['decision_id']}")).json()
        assert record["writeback"][0]["status"] == "delivered"
