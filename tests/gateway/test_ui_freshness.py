"""The freshness page: who may open it, and a real report read in headless Chromium
like a person would, figure by figure against ``GET /freshness``."""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from gateway.app import create_app
from gateway.auth import COOKIE
from gateway.freshness.signals import IngestSignals
from gateway.registry import load_registry
from gateway.settings import GatewaySettings
from gateway.ui.views import format_duration
from tests.gateway.test_ui import CHROMIUM, CHROMIUM_FLAGS, browser_like, key_id, log_in
from tests.support.gateway import serve
from tests.support.keys import KEYS, bearer
from tests.support.sample import SampleServers
from tests.support.scoring import body, seed

pytestmark = pytest.mark.services

Client = httpx.AsyncClient
SCREENSHOT = Path(__file__).parents[1] / "artifacts" / "freshness-page.png"


@pytest.fixture
async def gateway(settings: GatewaySettings) -> AsyncIterator[Client]:
    """A gateway rolling up served staleness in one-second slots."""
    writeback = msgspec.structs.replace(settings.writeback, freshness_resolution_s=1)
    async with serve(create_app(msgspec.structs.replace(settings, writeback=writeback))) as http:
        yield http


def share(value: float) -> str:
    return f"{value * 100:.1f}%"


async def rolled_up(client: Client, feature: str, served: int) -> dict[str, Any]:
    """The report once ``served`` serves of ``feature`` are counted in the last 5 minutes."""
    report: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            while True:
                answer = await client.get("/freshness", headers=bearer("auditor"))
                report = answer.json()
                found = [f for f in report["features"] if f["name"] == feature]
                if report["backlog"] == 0 and found[0]["windows"]["5m"]["served"] == served:
                    break
                await asyncio.sleep(0.2)
    return report


async def test_operators_and_auditors_open_the_page_others_do_not(gateway: Client) -> None:
    async with browser_like(gateway) as http:
        away = await http.get("/ui/freshness")
        assert away.status_code == 303
        assert away.headers["location"] == "/ui/login?next=/ui/freshness"
        # An operator's login lands on the freshness page: the decisions are auditors'.
        landed = await http.post("/ui/login", data={"key": KEYS["operator"]})
        assert landed.status_code == 303
        assert landed.headers["location"] == "/ui/freshness"
        page = await http.get("/ui/freshness")
        assert page.status_code == 200, page.text
        assert key_id("operator") in page.text
        assert 'id="freshness-txn_count_30m"' in page.text
        assert "<script" not in page.text
        assert (await http.get("/ui/decisions")).status_code == 403
        unknown = await http.get("/ui/freshness", params={"feature": "nope"})
        assert unknown.status_code == 404
        assert "feature: 'nope' is not in the registry" in html.unescape(unknown.text)

    async with browser_like(gateway) as http:
        refused = await http.post("/ui/login", data={"key": KEYS["scorer"]})
        assert refused.status_code == 403
        assert "does not hold the auditor role" in refused.text
        page = await http.get("/ui/freshness", headers={"Cookie": f"{COOKIE}={KEYS['scorer']}"})
        assert page.status_code == 403
        assert "neither the auditor nor the operator role" in page.text

    async with browser_like(gateway) as http:
        await log_in(http, "auditor")
        decisions = await http.get("/ui/decisions")
        assert 'href="/ui/freshness"' in decisions.text
        one = await http.get("/ui/freshness", params={"feature": "kyc_level"})
        assert one.status_code == 200
        assert re.findall(r'<section class="feature" id="freshness-([a-z0-9_]+)"', one.text) == [
            "kyc_level"
        ]


async def test_a_person_reads_the_freshness_page_in_headless_chromium(
    gateway: Client,
    servers: SampleServers,
    settings: GatewaySettings,
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    from playwright.async_api import async_playwright, expect

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: bash .ci/setup installs chromium"
    for n in range(3):
        await seed(gateway, f"c-fp-{n}", "m-fp", timedelta(seconds=4))
        fresh = await gateway.post("/score", json=body(f"c-fp-{n}", "m-fp"))
        assert fresh.status_code == 200, fresh.text
    await seed(gateway, "c-fp-old", "m-fp-old", timedelta(hours=2))
    await servers.fault_source("txn_stats", "error")
    stale = await gateway.post("/score", json=body("c-fp-old", "m-fp-old"))
    assert stale.json()["features"]["txn_count_30m"]["status"] == "stale"
    registry = load_registry(settings.registry_path)
    worker = IngestSignals(
        redis_client, settings.redis_prefix, registry.features, registry.file.streams
    )
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    worker.wrote("txn_count_30m", [250.0] * 9 + [9_000.0], now_ms - 500, now_ms)
    worker.consumer_lag("features.customer", 0, 42, now_ms)
    worker.schema_change("customer_features", "txn_count_30m", "schema_version", "got v7", now_ms)
    assert await worker.flush()
    report = await rolled_up(gateway, "txn_count_30m", 4)
    txn = next(f for f in report["features"] if f["name"] == "txn_count_30m")
    served = txn["windows"]["5m"]
    assert served["counts"]["fresh"] == 3 and served["counts"]["stale"] == 1

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            java_script_enabled=False,
            viewport={"width": 1440, "height": 900},
        )
        try:
            page = await context.new_page()
            await page.goto(f"{gateway.base_url}/ui/decisions")
            await page.get_by_label("API key").fill(KEYS["auditor"])
            await page.get_by_role("button", name="Log in").click()
            await expect(page).to_have_url(re.compile(r"/ui/decisions$"))
            await page.get_by_role("link", name="Freshness").click()
            await expect(page).to_have_url(re.compile(r"/ui/freshness$"))
            await expect(page.get_by_role("heading", level=1)).to_have_text("Freshness")
            await expect(page.locator("section.feature")).to_have_count(len(registry.features))

            section = page.locator("#freshness-txn_count_30m")
            await expect(section.locator(".sla")).to_have_text("SLA 60 s")
            await expect(section.locator(".owner")).to_have_text("owner payments-analytics")
            row = section.locator("tr.window-5m")
            await expect(row.locator(".served-count")).to_have_text("4")
            await expect(row.locator(".within-sla")).to_have_text(share(0.75))
            await expect(row.locator(".within-sla .below")).to_have_count(1)
            for cell in ("p50", "p95", "p99"):
                await expect(row.locator(f".{cell}")).to_have_text(
                    format_duration(served[f"staleness_{cell}_ms"])
                )
            await expect(row.locator(".share-fresh")).to_have_text(f"fresh {share(0.75)}")
            await expect(row.locator(".share-stale")).to_have_text(f"stale {share(0.25)}")
            # The bar's parts are as wide as the shares.
            track = await row.locator(".shares").bounding_box()
            fill = await row.locator(".shares > .fresh").bounding_box()
            assert track and fill
            assert fill["width"] / track["width"] == pytest.approx(0.75, abs=0.02)

            lag = section.locator(".ingest tr.lag-5m")
            await expect(lag.locator(".p50")).to_have_text(
                format_duration(txn["ingest"]["lag"]["5m"]["p50_ms"])
            )
            await expect(lag.locator(".p99")).to_have_text(
                format_duration(txn["ingest"]["lag"]["5m"]["p99_ms"])
            )
            await expect(section.locator(".schema-changes")).to_have_text("schema version 1")
            await expect(section.locator(".breaker")).to_have_text("closed")
            await expect(section.locator(".breaker-counts")).to_contain_text("1 closed")
            stream = section.locator("tr.stream-customer_features")
            await expect(stream.locator(".consumer-lag")).to_have_text("42")
            await expect(page.locator("#schema-changes + table")).to_contain_text("got v7")

            await page.get_by_label("Feature").select_option("chargeback_rate_90d")
            await page.get_by_role("button", name="Show").click()
            await expect(page).to_have_url(
                re.compile(r"/ui/freshness\?feature=chargeback_rate_90d")
            )
            await expect(page.locator("section.feature")).to_have_count(1)
            await expect(page.locator("#freshness-chargeback_rate_90d")).to_contain_text(
                "merchant_risk_cdc"
            )

            await page.get_by_label("Feature").select_option("")
            await page.get_by_role("button", name="Show").click()
            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=SCREENSHOT, full_page=True)
        finally:
            await context.close()
    assert SCREENSHOT.stat().st_size > 10_000
