"""``GET /freshness`` against the real services: decisions committed through ``/score``
with fresh, stale, default and fallback serves (sources faulted through the sample
servers), rolled up by the gateways, read back with the signals ingest workers and
gateways share in Redis. Two ``scoregate serve`` processes on one database and Redis
answer the same combined figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from gateway.app import create_app
from gateway.freshness.report import FreshnessReporter
from gateway.freshness.signals import IngestSignals
from gateway.registry import load_registry
from gateway.settings import GatewaySettings
from scoregate_dev.broker import free_port, wait_for_port
from tests.support.clock import ManualClock
from tests.support.gateway import serve
from tests.support.keys import API_KEYS, bearer
from tests.support.sample import SampleServers
from tests.support.scoring import body, seed
from writeback import create_pool

pytestmark = pytest.mark.services

Client = httpx.AsyncClient
Report = dict[str, Any]
FEATURES = [
    "txn_count_30m",
    "txn_amount_sum_24h",
    "distinct_merchants_7d",
    "account_age_days",
    "kyc_level",
    "country_risk",
    "chargeback_rate_90d",
]


@pytest.fixture
def fine(settings: GatewaySettings) -> GatewaySettings:
    """The test's settings with one-second rollup slots."""
    writeback = msgspec.structs.replace(settings.writeback, freshness_resolution_s=1)
    return msgspec.structs.replace(settings, writeback=writeback)


@pytest.fixture
async def gateway(fine: GatewaySettings) -> AsyncIterator[Client]:
    async with serve(create_app(fine)) as http:
        yield http


def feature_of(report: Report, name: str) -> Report:
    found: list[Report] = [f for f in report["features"] if f["name"] == name]
    assert len(found) == 1, [f["name"] for f in report["features"]]
    return found[0]


async def wait_for(
    ask: Callable[[], Awaitable[Report]], ready: Callable[[Report], bool], limit_s: float = 30
) -> Report:
    """Ask until the report is ``ready`` (reports are kept two seconds, and the rollup runs
    once a second); the last report is returned either way, for the assertions."""
    report = await ask()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            while not ready(report):
                await asyncio.sleep(0.2)
                report = await ask()
    return report


def served_in_5m(name: str, count: int) -> Callable[[Report], bool]:
    def ready(report: Report) -> bool:
        served: int = feature_of(report, name)["windows"]["5m"]["served"]
        return report["backlog"] == 0 and served == count

    return ready


def asker(client: Client, who: str = "auditor", **params: str) -> Callable[[], Awaitable[Report]]:
    async def ask() -> Report:
        response = await client.get("/freshness", params=params, headers=bearer(who))
        assert response.status_code == 200, response.text
        report: Report = response.json()
        return report

    return ask


def near(measured: float | None, true_ms: float, slack_ms: float) -> bool:
    """A percentile from the buckets is within 2.5% of a value known within ``slack_ms``."""
    assert measured is not None
    return true_ms * 0.97 - slack_ms <= measured <= (true_ms + slack_ms) * 1.03


async def score(client: Client, customer: str, merchant: str) -> dict[str, Any]:
    response = await client.post("/score", json=body(customer, merchant), headers=bearer("scorer"))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_shares_and_percentiles_of_fresh_stale_default_and_fallback_serves(
    gateway: Client, servers: SampleServers
) -> None:
    # Fresh: every stored feature five seconds old.
    await seed(gateway, "c-fr-1", "m-fr-1", timedelta(seconds=5))
    fresh = await score(gateway, "c-fr-1", "m-fr-1")
    assert {f["status"] for f in fresh["features"].values() if f["source"] != "request"} == {
        "fresh"
    }
    # Two hours old and txn_stats down: its serve_stale features stale, its default one
    # the default; the merchant's value (SLA one hour) fetched from its source.
    await seed(gateway, "c-fr-2", "m-fr-2", timedelta(hours=2))
    await servers.fault_source("txn_stats", "error")
    stale = (await score(gateway, "c-fr-2", "m-fr-2"))["features"]
    assert stale["txn_count_30m"]["status"] == "stale"
    assert stale["distinct_merchants_7d"]["status"] == "default"
    assert stale["chargeback_rate_90d"]["status"] == "fallback"
    # Nothing stored and txn_stats still down: defaults, and fallbacks from the others.
    empty = (await score(gateway, "c-fr-3", "m-fr-3"))["features"]
    assert empty["txn_count_30m"]["status"] == "default"
    assert empty["kyc_level"]["status"] == "fallback"

    report = await wait_for(asker(gateway), served_in_5m("txn_count_30m", 3))
    assert [f["name"] for f in report["features"]] == FEATURES
    assert report["resolution_s"] == 1
    assert report["signals_unavailable"] is None
    txn = feature_of(report, "txn_count_30m")
    assert (txn["entity"], txn["owner"], txn["sla_ms"]) == (
        "customer",
        "payments-analytics",
        60_000,
    )
    assert txn["objective"] == {"target": 0.99, "period_days": 30}
    for window in ("5m", "1h", "1d"):
        served = txn["windows"][window]
        assert served["served"] == 3
        assert served["within_sla"] == 1
        assert served["within_sla_share"] == pytest.approx(1 / 3)
        assert served["counts"] == {
            "fresh": 1,
            "fallback": 0,
            "stale": 1,
            "default": 1,
            "missing": 0,
        }
        assert served["shares"] == pytest.approx(
            {"fresh": 1 / 3, "fallback": 0, "stale": 1 / 3, "default": 1 / 3, "missing": 0}
        )
        # Staleness of the two serves that had one: 5 s and 2 h (the default has none).
        assert near(
            served["staleness_p50_ms"], fresh["features"]["txn_count_30m"]["staleness_ms"], 0
        )
        for p in ("staleness_p95_ms", "staleness_p99_ms"):
            assert near(served[p], stale["txn_count_30m"]["staleness_ms"], 0)

    merchant = feature_of(report, "chargeback_rate_90d")["windows"]["5m"]
    assert merchant["counts"] == {"fresh": 1, "fallback": 2, "stale": 0, "default": 0, "missing": 0}
    assert merchant["within_sla"] == 3
    assert merchant["within_sla_share"] == 1.0
    kyc = feature_of(report, "kyc_level")
    assert kyc["windows"]["5m"]["counts"]["fresh"] == 2
    assert kyc["windows"]["5m"]["counts"]["fallback"] == 1
    assert kyc["source"]["name"] == "customer_profile"
    assert kyc["source"]["owner"] == "customer-data"
    # The gateway publishes its breakers as it starts: one process, closed.
    assert kyc["source"]["breaker"] == {
        "name": "source:customer_profile",
        "state": "closed",
        "closed": 1,
        "open": 0,
        "half_open": 0,
    }
    assert report["gateway_processes"] == 1


async def test_a_feature_with_nothing_served_has_no_shares(gateway: Client) -> None:
    report = await asker(gateway, feature="country_risk")()
    assert [f["name"] for f in report["features"]] == ["country_risk"]
    window = report["features"][0]["windows"]["1h"]
    assert window["served"] == 0
    assert window["within_sla_share"] is None
    assert window["shares"] is None
    assert window["staleness_p50_ms"] is None
    assert report["features"][0]["ingest"]["lag"]["5m"] == {
        "written": 0,
        "p50_ms": None,
        "p99_ms": None,
    }


async def test_auditors_and_operators_may_read_it_and_a_feature_is_checked(
    gateway: Client,
) -> None:
    for who in ("auditor", "operator", "admin"):
        answer = await gateway.get("/freshness", headers=bearer(who))
        assert answer.status_code == 200, (who, answer.text)
    for who in ("scorer", "feature_writer"):
        refused = await gateway.get("/freshness", headers=bearer(who))
        assert refused.status_code == 403, who
        assert "auditor or the operator" in refused.json()["detail"]
    assert (await gateway.get("/freshness", headers={"Authorization": ""})).status_code == 401
    unknown = await gateway.get("/freshness", params={"feature": "nope"}, headers=bearer("auditor"))
    assert unknown.status_code == 404
    assert unknown.json()["field"] == "feature"
    bad = await gateway.get("/freshness", params={"feature": "a\x01b"}, headers=bearer("auditor"))
    assert bad.status_code == 400
    assert bad.json()["field"] == "feature"
    schema = (await gateway.get("/schema/openapi.json")).json()
    assert "/freshness" in schema["paths"]


async def test_ingest_signals_appear_per_feature_and_stream(
    gateway: Client, fine: GatewaySettings, redis_client: aioredis.Redis
) -> None:
    registry = load_registry(fine.registry_path)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    # Two ingest workers: percentiles are those of both workers' values together.
    workers = [
        IngestSignals(redis_client, fine.redis_prefix, registry.features, registry.file.streams)
        for _ in range(2)
    ]
    workers[0].wrote("txn_count_30m", [100.0] * 90, now_ms - 2_000, now_ms)
    workers[1].wrote("txn_count_30m", [4_000.0] * 10, now_ms - 1_000, now_ms)
    workers[0].seen("customer_features", now_ms - 1_500)
    workers[1].seen("merchant_risk_cdc", now_ms - 3_000)
    workers[0].consumer_lag("features.customer", 0, 7, now_ms)
    workers[1].consumer_lag("features.customer", 1, 5, now_ms)
    workers[0].schema_change("customer_features", "txn_count_30m", "schema_version", "v9", now_ms)
    assert all([await w.flush() for w in workers])

    report = await wait_for(
        asker(gateway),
        lambda r: feature_of(r, "txn_count_30m")["ingest"]["lag"]["5m"]["written"] == 100,
    )
    ingest = feature_of(report, "txn_count_30m")["ingest"]
    assert near(ingest["lag"]["5m"]["p50_ms"], 100, 0)
    assert near(ingest["lag"]["1h"]["p99_ms"], 4_000, 0)
    assert ingest["lag"]["1d"]["written"] == 100
    assert at_ms(ingest["last_event_time"]) == now_ms - 1_000
    assert ingest["schema_changes"] == {"schema_version": 1}
    streams = {s["name"]: s for s in feature_of(report, "txn_count_30m")["streams"]}
    # A feature-update stream may carry any feature; the CDC stream maps only the merchant's.
    assert set(streams) == {"customer_features"}
    assert at_ms(streams["customer_features"]["last_event_time"]) == now_ms - 1_500
    assert streams["customer_features"]["consumer_lag"] == 12
    assert [p["partition"] for p in streams["customer_features"]["partitions"]] == [0, 1]
    assert streams["customer_features"]["schema_changes"] == 1
    merchant_streams = feature_of(report, "chargeback_rate_90d")["streams"]
    assert {s["name"] for s in merchant_streams} == {"customer_features", "merchant_risk_cdc"}
    cdc = next(s for s in merchant_streams if s["name"] == "merchant_risk_cdc")
    assert at_ms(cdc["last_event_time"]) == now_ms - 3_000
    assert cdc["consumer_lag"] is None
    assert [c["detail"] for c in report["schema_changes"]] == ["v9"]


def at_ms(text: str | None) -> int:
    assert text is not None
    return round(datetime.fromisoformat(text).timestamp() * 1000)


async def test_concurrent_callers_share_one_report_kept_for_its_cache_time(
    gateway: Client, fine: GatewaySettings
) -> None:
    registry = load_registry(fine.registry_path)
    pool = await create_pool(fine.writeback)
    clock = ManualClock()
    redis = aioredis.Redis.from_url(fine.redis_url)
    reporter = FreshnessReporter(registry, pool, redis, fine.redis_prefix, 1, 2.0, clock=clock)
    try:
        first = await asyncio.gather(*(reporter.report() for _ in range(20)))
        assert all(report is first[0] for report in first)
        assert await reporter.report() is first[0]
        # One feature's report is cut from the report of all while it is fresh.
        one = await reporter.report("kyc_level")
        assert one.generated_at == first[0].generated_at
        assert [f.name for f in one.features] == ["kyc_level"]
        clock.advance(2.0)
        again = await reporter.report()
        assert again is not first[0]
        assert again.generated_at > first[0].generated_at
        with pytest.raises(KeyError):
            await reporter.report("nope")
    finally:
        await reporter.close()
        await redis.aclose()
        await pool.close()


async def test_without_redis_the_served_figures_still_come(
    gateway: Client, fine: GatewaySettings
) -> None:
    await seed(gateway, "c-nr-1", "m-nr-1", timedelta(seconds=2))
    await score(gateway, "c-nr-1", "m-nr-1")
    await wait_for(asker(gateway), served_in_5m("kyc_level", 1))
    registry = load_registry(fine.registry_path)
    pool = await create_pool(fine.writeback)
    nowhere = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    reporter = FreshnessReporter(registry, pool, nowhere, fine.redis_prefix, 1, 0.0)
    try:
        report = await reporter.report()
    finally:
        await reporter.close()
        await nowhere.aclose()
        await pool.close()
    assert report.signals_unavailable is not None
    assert "Redis" in report.signals_unavailable
    kyc = next(f for f in report.features if f.name == "kyc_level")
    assert kyc.windows["5m"].served == 1
    assert kyc.source is not None and kyc.source.breaker.state == "unreported"
    assert report.gateway_processes == 0


# Two gateway processes ------------------------------------------------------------


async def start_gateway(
    settings: GatewaySettings, log: Path
) -> tuple[asyncio.subprocess.Process, str]:
    """``scoregate serve`` for ``settings`` on a port of its own, once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "SCOREGATE_REGISTRY": str(settings.registry_path),
        "SCOREGATE_DATABASE_URL": settings.writeback.database_url,
        "SCOREGATE_KAFKA_BOOTSTRAP": settings.writeback.kafka_bootstrap,
        "SCOREGATE_TOPIC": settings.writeback.topic,
        "SCOREGATE_REDIS_URL": settings.redis_url,
        "SCOREGATE_REDIS_PREFIX": settings.redis_prefix,
        "SCOREGATE_API_KEYS": ",".join(key.line() for key in API_KEYS),
        "SCOREGATE_PII_KEY": "test-pii-key",
        "SCOREGATE_FRESHNESS_RESOLUTION_S": "1",
        "SCOREGATE_RELAY": "false",
    }
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            env=env,
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_for_port("127.0.0.1", port, limit_s=30)
        async with httpx.AsyncClient(base_url=url) as http, asyncio.timeout(30):
            while (await http.get("/health/live")).status_code != 200:
                await asyncio.sleep(0.1)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process, url


@pytest.fixture
async def two_gateways(
    settings: GatewaySettings, tmp_path: Path
) -> AsyncIterator[tuple[Client, Client]]:
    """Two ``scoregate serve`` processes on the test's database and Redis prefix."""
    processes: list[asyncio.subprocess.Process] = []
    try:
        clients = []
        for n in (1, 2):
            process, url = await start_gateway(settings, tmp_path / f"gateway-{n}.log")
            processes.append(process)
            clients.append(httpx.AsyncClient(base_url=url, timeout=10, headers=bearer("admin")))
        yield clients[0], clients[1]
        for http in clients:
            await http.aclose()
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
                await process.wait()


async def test_two_gateway_processes_report_the_combined_figures(
    two_gateways: tuple[Client, Client], servers: SampleServers
) -> None:
    first, second = two_gateways
    # The first process serves only fresh values; the second only stale and default ones.
    for n in range(3):
        await seed(first, f"c-two-{n}", "m-two", timedelta(seconds=3))
        answer = await score(first, f"c-two-{n}", "m-two")
        assert answer["features"]["txn_count_30m"]["status"] == "fresh"
    await seed(second, "c-two-old", "m-two", timedelta(hours=2))
    await servers.fault_source("txn_stats", "error")
    for _ in range(2):
        answer = await score(second, "c-two-old", "m-two")
        assert answer["features"]["txn_count_30m"]["status"] == "stale"
    await score(second, "c-two-none", "m-two")
    # The second process's customer_profile breaker opens (five failures in a row);
    # the first's stays closed.
    await servers.fault_source("customer_profile", "error")
    for n in range(3):
        refused = await second.post(
            "/score", json=body(f"c-two-down-{n}", "m-two"), headers=bearer("scorer")
        )
        assert refused.status_code == 503

    def combined(report: Report) -> bool:
        kyc = feature_of(report, "kyc_level")
        return (
            served_in_5m("txn_count_30m", 6)(report)
            and kyc["source"]["breaker"]["open"] == 1
            and kyc["source"]["breaker"]["closed"] == 1
        )

    reports = [await wait_for(asker(http), combined) for http in (first, second)]
    for report in reports:
        assert report["gateway_processes"] == 2
        txn = feature_of(report, "txn_count_30m")["windows"]["5m"]
        assert txn["counts"] == {"fresh": 3, "fallback": 0, "stale": 2, "default": 1, "missing": 0}
        assert txn["shares"] == pytest.approx(
            {"fresh": 0.5, "fallback": 0, "stale": 1 / 3, "default": 1 / 6, "missing": 0}
        )
        assert txn["within_sla_share"] == pytest.approx(0.5)
        assert near(txn["staleness_p50_ms"], 3_000, 1_000)
        assert near(txn["staleness_p99_ms"], 7_200_000, 5_000)
        breaker = feature_of(report, "kyc_level")["source"]["breaker"]
        assert breaker == {
            "name": "source:customer_profile",
            "state": "open",
            "closed": 1,
            "open": 1,
            "half_open": 0,
        }
    assert feature_of(reports[0], "txn_count_30m") == feature_of(reports[1], "txn_count_30m")
