"""What reconciliation found of a decision's served values, as auditors read it: the
decision API, the page (over HTTP and in headless Chromium) and ``GET /reconciliation``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from gateway.features.online_store import OnlineStore
from gateway.features.sources import SourceClient
from gateway.freshness.reconciliation import EntitySampler, Reconciler
from gateway.registry import load_registry
from gateway.settings import GatewaySettings
from scoregate_dev.sample_sources import profile_record, txn_stats_record
from tests.support.keys import KEYS, bearer
from tests.support.scoring import CUSTOMER_FEATURES, body, seed
from writeback import ReconciliationStore

pytestmark = pytest.mark.services

Client = httpx.AsyncClient
CHECKED = ("txn_count_30m", "kyc_level", "account_age_days")
CHROMIUM = "/usr/bin/chromium"


def customer_with_one_agreement() -> str:
    """A customer whose sample records agree with the seeded kyc_level only."""
    now = datetime.now(UTC)
    for i in range(500):
        customer = f"c-ui-rec-{i}"
        profile, txn = profile_record(customer, now), txn_stats_record(customer, now)
        if (
            profile.kyc_level == CUSTOMER_FEATURES["kyc_level"]
            and profile.account_age_days != CUSTOMER_FEATURES["account_age_days"]
            and txn.txn_count_30m != CUSTOMER_FEATURES["txn_count_30m"]
        ):
            return customer
    raise AssertionError("no such customer among the sample's")


@pytest.fixture
async def reconciler(settings: GatewaySettings) -> AsyncIterator[Reconciler]:
    registry = load_registry(settings.registry_path)
    store = OnlineStore.from_url(
        settings.redis_url, settings.redis_prefix, registry.file.online_store, 4
    )
    sampler = EntitySampler(aioredis.Redis.from_url(settings.redis_url), store)
    pool = await asyncpg.create_pool(settings.writeback.database_url, min_size=1, max_size=2)
    async with aiohttp.ClientSession() as session:
        sources = {name: SourceClient(s, session) for name, s in registry.sources.items()}
        runs = ReconciliationStore(pool, settings.writeback.database_url)
        yield Reconciler(registry, store, sources, sampler, runs)
    await pool.close()
    await sampler.close()
    await store.close()


async def decided_and_reconciled(client: Client, reconciler: Reconciler) -> tuple[str, str]:
    customer = customer_with_one_agreement()
    await seed(client, customer, "m-ui", timedelta(seconds=5))
    response = await client.post("/score", json=body(customer, "m-ui"), headers=bearer("scorer"))
    assert response.status_code == 200, response.text
    for name in CHECKED:
        run = await reconciler.run(name, sample=0, entity_ids=[customer])
        assert run is not None and run.checked == 1
    return customer, response.json()["decision_id"]


async def test_the_decision_says_which_served_values_disagreed_with_the_source(
    client: Client, reconciler: Reconciler
) -> None:
    customer, decision_id = await decided_and_reconciled(client, reconciler)
    truth = profile_record(customer, datetime.now(UTC))

    pii = (await client.get(f"/decisions/{decision_id}", headers=bearer("auditor_pii"))).json()
    checks = pii["reconciliation"]
    assert set(checks) == set(CHECKED)
    assert checks["kyc_level"]["agrees"] and checks["kyc_level"]["kind"] in (
        "match",
        "newer_at_source",
    )
    assert not checks["txn_count_30m"]["agrees"]
    assert checks["txn_count_30m"]["kind"] == "mismatch"
    expected = txn_stats_record(customer, datetime.now(UTC)).txn_count_30m
    assert checks["txn_count_30m"]["source_value"] == expected
    assert checks["account_age_days"]["source_value"] == truth.account_age_days

    # A reader without the pii scope sees the source's PII value masked, as the served one.
    masked = (await client.get(f"/decisions/{decision_id}", headers=bearer("auditor"))).json()
    source_age = masked["reconciliation"]["account_age_days"]["source_value"]
    assert source_age.startswith("***") and str(truth.account_age_days) not in source_age
    assert masked["reconciliation"]["txn_count_30m"] == checks["txn_count_30m"]


async def test_a_decision_no_run_covered_says_nothing(client: Client) -> None:
    await seed(client, "c-ui-unchecked", "m-ui", timedelta(seconds=5))
    response = await client.post(
        "/score", json=body("c-ui-unchecked", "m-ui"), headers=bearer("scorer")
    )
    decision_id = response.json()["decision_id"]
    record = (await client.get(f"/decisions/{decision_id}", headers=bearer("auditor"))).json()
    assert record["reconciliation"] == {}
    page = await client.get(
        f"/ui/decisions/{decision_id}", headers={"Cookie": f"scoregate_key={KEYS['auditor']}"}
    )
    assert page.status_code == 200
    assert "later found to disagree" not in page.text
    assert "not checked" in page.text


async def test_the_page_marks_each_feature_with_what_reconciliation_found(
    client: Client, reconciler: Reconciler
) -> None:
    _, decision_id = await decided_and_reconciled(client, reconciler)
    record = (await client.get(f"/decisions/{decision_id}", headers=bearer("auditor"))).json()
    async with httpx.AsyncClient(base_url=client.base_url, timeout=10) as http:
        login = await http.post("/ui/login", data={"key": KEYS["auditor"]})
        assert login.status_code == 303
        page = (await http.get(f"/ui/decisions/{decision_id}")).text

    def row(name: str) -> str:
        found = re.search(rf'<tr id="feature-{name}">(.*?)</tr>', page, re.S)
        assert found, name
        return found.group(1)

    txn = row("txn_count_30m")
    assert "later found to disagree with the source" in txn
    assert f"<code>{record['reconciliation']['txn_count_30m']['source_value']}</code>" in txn
    assert record["reconciliation"]["txn_count_30m"]["run_id"] in txn
    assert "agrees with the source" in row("kyc_level")
    age = row("account_age_days")
    assert "later found to disagree" in age and "***" in age
    assert "not checked" in row("country_risk")


async def test_reconciliation_report_for_auditors_and_operators(
    client: Client, reconciler: Reconciler
) -> None:
    await decided_and_reconciled(client, reconciler)
    for who in ("auditor", "operator", "admin"):
        report = await client.get("/reconciliation", headers=bearer(who))
        assert report.status_code == 200, (who, report.text)
    data = report.json()
    assert {run["feature"] for run in data["runs"]} == set(CHECKED)
    by_feature = {run["feature"]: run for run in data["runs"]}
    assert by_feature["txn_count_30m"]["mismatched"] == 1
    assert by_feature["txn_count_30m"]["findings"][0]["kind"] == "mismatch"
    assert by_feature["kyc_level"]["matched"] == 1
    assert data["unreconciled"] == []  # every sample feature has a source

    one = (await client.get("/reconciliation", params={"feature": "kyc_level"})).json()
    assert [run["feature"] for run in one["runs"]] == ["kyc_level"]
    assert (await client.get("/reconciliation", headers=bearer("scorer"))).status_code == 403
    unknown = await client.get("/reconciliation", params={"feature": "no_such_feature"})
    assert unknown.status_code == 400
    assert "feature" in unknown.text


async def test_an_auditor_sees_the_disagreement_in_headless_chromium(
    client: Client, reconciler: Reconciler, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: bash .ci/setup installs chromium"
    _, decision_id = await decided_and_reconciled(client, reconciler)
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
            java_script_enabled=False,
        )
        try:
            page = await context.new_page()
            await page.goto(f"{client.base_url}/ui/decisions/{decision_id}")
            await page.get_by_label("API key").fill(KEYS["auditor"])
            await page.get_by_role("button", name="Log in").click()
            await expect(page).to_have_url(re.compile(rf"/ui/decisions/{decision_id}"))
            txn = page.locator("#feature-txn_count_30m .reconciliation")
            await expect(txn.locator(".badge")).to_have_text(
                "later found to disagree with the source"
            )
            kyc = page.locator("#feature-kyc_level .reconciliation .badge")
            await expect(kyc).to_have_text("agrees with the source")
            header = page.locator("#features thead, section table thead").first
            await expect(header).to_contain_text("Reconciliation")
        finally:
            await context.close()


async def test_reconciliation_report_masks_pii_values_without_the_scope(
    client: Client, reconciler: Reconciler
) -> None:
    customer, _ = await decided_and_reconciled(client, reconciler)
    truth = profile_record(customer, datetime.now(UTC)).account_age_days

    def age_finding(who: str) -> dict[str, Any]:
        return next(
            finding
            for run in reports[who]["runs"]
            if run["feature"] == "account_age_days"
            for finding in run["findings"]
            if finding["entity_id"] == customer
        )

    reports = {
        who: (
            await client.get(
                "/reconciliation", params={"feature": "account_age_days"}, headers=bearer(who)
            )
        ).json()
        for who in ("auditor", "auditor_pii", "operator")
    }

    plain = age_finding("auditor_pii")
    assert plain["source_value"] == truth
    assert plain["stored_value"] == CUSTOMER_FEATURES["account_age_days"]
    for who in ("auditor", "operator"):
        masked = age_finding(who)
        for field in ("stored_value", "source_value"):
            value = masked[field]
            assert isinstance(value, str) and value.startswith("***"), (who, field, value)
    # Features that are not PII read the same for every reader.
    txn = await client.get("/reconciliation", params={"feature": "txn_count_30m"})
    assert txn.json()["runs"][0]["findings"][0]["source_value"] == (
        txn_stats_record(customer, datetime.now(UTC)).txn_count_30m
    )


async def test_the_freshness_page_shows_each_features_latest_reconciliation(
    client: Client, reconciler: Reconciler
) -> None:
    customer, _ = await decided_and_reconciled(client, reconciler)
    truth = profile_record(customer, datetime.now(UTC)).account_age_days
    async with httpx.AsyncClient(base_url=client.base_url, timeout=10) as http:
        login = await http.post("/ui/login", data={"key": KEYS["operator"]})
        assert login.status_code == 303
        page = await http.get("/ui/freshness", params={"feature": "txn_count_30m"})
        age = await http.get("/ui/freshness", params={"feature": "account_age_days"})
    assert page.status_code == 200, page.text[:2000]
    block = page.text[page.text.index("Reconciliation against the source") :]
    assert "1 of 1 sampled" in block and "1 mismatch" in block and "0 match" in block
    row = re.search(r'<tr class="finding-mismatch">(.*?)</tr>', block, re.S)
    assert row and f"<code>{customer}</code>" in row.group(1)
    # An operator without the pii scope sees a PII feature's values masked.
    age_block = age.text[age.text.index("Reconciliation against the source") :]
    age_row = re.search(r'<tr class="finding-mismatch">(.*?)</tr>', age_block, re.S)
    assert age_row and "***" in age_row.group(1)
    assert f">{truth}<" not in age_row.group(1)
