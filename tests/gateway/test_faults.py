"""Fault injection against real processes: sources that fail, hang and flap, a Redis
that stops, a model server that fails or hangs."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from gateway.app import create_app
from gateway.dev.broker import free_port, wait_for_port
from gateway.settings import GatewaySettings
from tests.conftest import SampleServers, serve
from tests.gateway.test_score import body, seed

pytestmark = pytest.mark.services

Client = httpx.AsyncClient

RESET_MS = 500


@pytest.fixture
def registry_path(registry_path: Path) -> Path:
    """The sample registry with quick breaker resets and a cap of 2 calls on txn_stats."""
    text = registry_path.read_text().replace(
        "reset_timeout_ms = 10000", f"reset_timeout_ms = {RESET_MS}"
    )
    text = text.replace(
        'owner = "payments-analytics"\ntimeout_ms = 150',
        'owner = "payments-analytics"\ntimeout_ms = 150\nmax_concurrency = 2',
    )
    quick = f"{{ fail_max = 5, reset_timeout_ms = {RESET_MS} }}"
    text = text.replace("timeout_ms = 300\n", f"timeout_ms = 300\nbreaker = {quick}\n")
    store = f"{{ fail_max = 2, reset_timeout_ms = {RESET_MS} }}"
    text += f"\n[online_store]\ntimeout_ms = 50\nbreaker = {store}\n"
    registry_path.write_text(text)
    return registry_path


async def record(client: Client, answer: dict[str, Any]) -> dict[str, Any]:
    response = await client.get(f"/decisions/{answer['decision_id']}")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def breakers(client: Client) -> dict[str, str]:
    states: dict[str, str] = (await client.get("/health/ready")).json()["breakers"]
    return states


async def test_hanging_source_costs_at_most_the_deadline_then_the_policy(
    client: Client, servers: SampleServers
) -> None:
    await seed(client, "c-h1", "m-h1", timedelta(hours=2))
    await servers.fault_source("txn_stats", "hang")
    for budget_ms in (400, 100):
        response = await client.post(
            "/score", json=body("c-h1", "m-h1"), headers={"X-Request-Timeout-Ms": str(budget_ms)}
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["features"]["txn_count_30m"]["status"] == "stale"
        assert answer["features"]["distinct_merchants_7d"]["status"] == "default"
        assert answer["degraded"] is True
        audited = await record(client, answer)
        # A bound, not a speed claim: the source may not hold the request past its budget.
        assert audited["timings"]["sources_ms"] <= budget_ms + 50
        assert "txn_stats" in audited["problems"]["txn_count_30m"]


async def test_breaker_opens_and_later_requests_do_not_wait_on_the_source(
    client: Client, servers: SampleServers
) -> None:
    await servers.fault_source("txn_stats", "hang")
    # Two attempts per request, fail_max 5: the third request opens the breaker.
    for i in range(3):
        await seed(client, f"c-o{i}", "m-o", timedelta(hours=2))
        assert (await client.post("/score", json=body(f"c-o{i}", "m-o"))).status_code == 200
    assert (await breakers(client))["source:txn_stats"] == "open"
    calls = (await servers.source_calls())["txn_stats"]
    assert calls == 5
    for i in range(3, 8):
        await seed(client, f"c-o{i}", "m-o", timedelta(hours=2))
        answer = (await client.post("/score", json=body(f"c-o{i}", "m-o"))).json()
        assert answer["features"]["txn_count_30m"]["status"] == "stale"
        audited = await record(client, answer)
        assert "open" in audited["problems"]["txn_count_30m"]
        assert audited["timings"]["sources_ms"] < 100
    assert (await servers.source_calls())["txn_stats"] == calls
    # Only a source breaker is open: the gateway stays ready, and says which is open.
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["breakers"]["source:txn_stats"] == "open"


async def test_half_open_admits_one_probe_and_recovery_closes_the_breaker(
    client: Client, servers: SampleServers
) -> None:
    await servers.fault_source("txn_stats", "error")
    for i in range(3):
        await client.post("/score", json=body(f"c-p{i}", "m-p"))
    assert (await breakers(client))["source:txn_stats"] == "open"
    await servers.fault_source("txn_stats", "hang")
    before = (await servers.source_calls())["txn_stats"]
    await asyncio.sleep(RESET_MS / 1000 + 0.1)
    answers = await asyncio.gather(
        *(client.post("/score", json=body(f"c-q{i}", "m-p")) for i in range(10))
    )
    assert {a.status_code for a in answers} == {200}
    assert (await servers.source_calls())["txn_stats"] == before + 1
    assert (await breakers(client))["source:txn_stats"] == "open"

    await servers.fault_source("txn_stats", "ok")
    await asyncio.sleep(RESET_MS / 1000 + 0.1)
    answer = (await client.post("/score", json=body("c-r1", "m-p"))).json()
    assert answer["features"]["txn_count_30m"]["status"] == "fallback"
    assert (await breakers(client))["source:txn_stats"] == "closed"


async def test_flapping_source_is_served_between_failures(
    client: Client, servers: SampleServers
) -> None:
    # Every second call fails; one retry turns each failure into a success.
    await servers.fault_source("txn_stats", "flap", flap_every=2)
    for i in range(6):
        answer = (await client.post("/score", json=body(f"c-f{i}", "m-f"))).json()
        assert answer["features"]["txn_count_30m"]["status"] == "fallback"
    assert (await breakers(client))["source:txn_stats"] == "closed"


async def test_not_found_is_an_answer_not_a_failure(client: Client, servers: SampleServers) -> None:
    for i in range(8):
        response = await client.post("/score", json=body(f"unknown-{i}", "m-1"))
        assert response.status_code == 503
        assert response.json()["field"] == "features.kyc_level"
        assert "no such record" in response.json()["detail"]
    states = await breakers(client)
    assert states["source:customer_profile"] == "closed"
    assert states["source:txn_stats"] == "closed"


async def test_concurrency_cap_sends_the_excess_to_the_policy(
    client: Client, servers: SampleServers
) -> None:
    await servers.fault_source("txn_stats", "latency", latency_ms=100)
    answers = await asyncio.gather(
        *(client.post("/score", json=body(f"c-cap{i}", "m-c")) for i in range(5))
    )
    statuses = sorted(a.json()["features"]["txn_count_30m"]["status"] for a in answers)
    assert statuses == ["default", "default", "default", "fallback", "fallback"]
    assert (await servers.source_calls())["txn_stats"] == 2
    # Refused by the cap, not failed: the breaker does not count it.
    assert (await breakers(client))["source:txn_stats"] == "closed"


async def test_concurrent_requests_for_one_entity_share_one_source_call(
    settings: GatewaySettings, servers: SampleServers, tmp_path: Path
) -> None:
    # Slow sources (with timeouts and a deadline to match) keep the first call in
    # flight while all hundred requests arrive, however busy the machine is.
    slow = tmp_path / "slow.toml"
    text = settings.registry_path.read_text().replace("timeout_ms = 150", "timeout_ms = 5000")
    slow.write_text(text.replace("timeout_ms = 300\n", "timeout_ms = 300\ndeadline_ms = 8000\n"))
    for source in ("customer_profile", "txn_stats", "merchant_risk"):
        await servers.fault_source(source, "latency", latency_ms=1500)
    local = msgspec.structs.replace(settings, registry_path=slow)
    async with serve(create_app(local)) as client:
        answers = await asyncio.gather(
            *(client.post("/score", json=body("c-one", "m-one")) for _ in range(100))
        )
    assert {a.status_code for a in answers} == {200}
    assert {a.json()["features"]["kyc_level"]["status"] for a in answers} == {"fallback"}
    assert await servers.source_calls() == {
        "customer_profile": 1,
        "txn_stats": 1,
        "merchant_risk": 1,
    }


async def test_model_down_is_503_and_its_open_breaker_answers_at_once(
    client: Client, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-m1", "m-m1", timedelta(seconds=1))
    await servers.fault_model("error")
    for _ in range(3):
        response = await client.post("/score", json=body("c-m1", "m-m1"))
        assert response.status_code == 503
    calls = await model_calls(servers)
    assert calls == 5
    response = await client.post("/score", json=body("c-m1", "m-m1"))
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "circuit open" in response.json()["detail"]
    assert await model_calls(servers) == calls
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 0

    await servers.fault_model("ok")
    await asyncio.sleep(RESET_MS / 1000 + 0.1)
    assert (await client.post("/score", json=body("c-m1", "m-m1"))).status_code == 200


async def test_model_that_never_answers_is_504_at_the_deadline(
    client: Client, servers: SampleServers
) -> None:
    await seed(client, "c-m2", "m-m2", timedelta(seconds=1))
    await servers.fault_model("hang")
    response = await client.post(
        "/score", json=body("c-m2", "m-m2"), headers={"X-Request-Timeout-Ms": "200"}
    )
    assert response.status_code == 504
    assert response.json()["field"] == "model"


async def model_calls(servers: SampleServers) -> int:
    async with servers.http.get(f"{servers.model_url}/_stats") as response:
        calls: int = (await response.json())["infer_calls"]
        return calls


class OwnRedis:
    """A redis-server of the test's own, on a free port, that the test can stop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
        )
        await wait_for_port("127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()


@pytest.fixture
async def own_redis() -> AsyncIterator[OwnRedis]:
    server = OwnRedis()
    await server.start()
    yield server
    await server.stop()


async def test_redis_stopped_means_degraded_answers_from_sources(
    settings: GatewaySettings, own_redis: OwnRedis, servers: SampleServers
) -> None:
    local = msgspec.structs.replace(settings, redis_url=own_redis.url)
    async with serve(create_app(local)) as client:
        await seed(client, "c-r1", "m-r1", timedelta(seconds=1))
        fresh = (await client.post("/score", json=body("c-r1", "m-r1"))).json()
        assert fresh["features"]["kyc_level"]["status"] == "fresh"
        assert fresh["degraded"] is False

        await own_redis.stop()
        for _ in range(4):
            response = await client.post("/score", json=body("c-r1", "m-r1"))
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["degraded"] is True
            assert answer["features"]["kyc_level"]["status"] == "fallback"
            assert answer["features"]["chargeback_rate_90d"]["status"] == "fallback"
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"]["ok"] is False
        assert ready.json()["breakers"]["online_store"] == "open"
        push = await client.post(
            "/features/push",
            json={
                "entities": {"customer_id": "c-r1"},
                "features": {"kyc_level": 2},
                "event_time": "2026-01-01T00:00:00Z",
                "lineage": {"source_system": "cdc", "source_ref": "r:1"},
            },
        )
        assert push.status_code == 503

        await own_redis.start()
        await asyncio.sleep(RESET_MS / 1000 + 0.1)
        # The probe read finds an empty Redis (it keeps nothing): sources, then fresh.
        answer = (await client.post("/score", json=body("c-r2", "m-r1"))).json()
        assert answer["features"]["kyc_level"]["status"] == "fallback"
        assert (await client.get("/health/ready")).json()["breakers"]["online_store"] == "closed"
        for _ in range(50):
            again = (await client.post("/score", json=body("c-r2", "m-r1"))).json()
            if again["features"]["kyc_level"]["status"] == "fresh":
                break
            await asyncio.sleep(0.02)
        assert again["features"]["kyc_level"]["status"] == "fresh"
        assert again["degraded"] is False


def test_redis_server_binary_is_available() -> None:
    # The Redis fault test starts its own server; say clearly when it cannot.
    import shutil

    assert shutil.which("redis-server"), f"redis-server not on PATH for {sys.executable}"


async def test_requests_over_the_in_flight_cap_are_refused_at_once(
    settings: GatewaySettings, servers: SampleServers
) -> None:
    await servers.fault_model("latency", latency_ms=200)
    capped = msgspec.structs.replace(settings, max_in_flight=2)
    async with serve(create_app(capped)) as client:
        await seed(client, "c-cap", "m-cap", timedelta(seconds=1))
        answers = await asyncio.gather(
            *(client.post("/score", json=body("c-cap", "m-cap")) for _ in range(6))
        )
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 200, 503, 503, 503, 503]
        refused = next(a for a in answers if a.status_code == 503)
        assert refused.headers["retry-after"] == "1"
        assert "overloaded" in refused.json()["detail"]
        # The cap frees as requests finish.
        assert (await client.post("/score", json=body("c-cap", "m-cap"))).status_code == 200
