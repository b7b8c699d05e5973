"""The auditor's page: login, roles and masking over plain HTTP, and a real decision's
page read in headless Chromium like a person would."""

from __future__ import annotations

import asyncio
import html
import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest

from gateway.app import create_app
from gateway.auth import COOKIE, key_from_secret
from gateway.settings import GatewaySettings
from gateway.ui.views import format_duration
from tests.support.gateway import serve
from tests.support.keys import KEYS, bearer
from tests.support.scoring import body, seed

pytestmark = pytest.mark.services

Client = httpx.AsyncClient

SCREENSHOT = Path(__file__).parents[1] / "artifacts" / "decision-page.png"
CHROMIUM = os.environ.get("SCOREGATE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MISSING = "01a20000-0000-7000-8000-000000000000"

# A dead letter as the relay leaves one (outbox row and timeline entry), without
# needing a broker that refuses the event.
DEAD_LETTER = """
WITH dead AS (
    UPDATE outbox SET status = 'dead_lettered', attempts = 1,
        dead_letter_reason = 'non_retriable',
        error_class = 'aiokafka.errors.TopicAuthorizationFailedError',
        last_error = 'TopicAuthorizationFailedError: denied', first_failed_at = now(),
        last_failed_at = now(), dead_lettered_at = now(), dlq_topic = topic || '.dlq',
        dlq_partition = 0, dlq_offset = 7
    WHERE decision_id = $1
    RETURNING *
)
INSERT INTO writeback_timeline (event_id, decision_id, event_type, stage, at, attempts, topic,
                                "partition", "offset", error, actor)
SELECT event_id, decision_id, event_type, 'dead_lettered', dead_lettered_at, attempts,
       dlq_topic, dlq_partition, dlq_offset, last_error, 'relay-test'
FROM dead
RETURNING event_id
"""


def key_id(who: str) -> str:
    return key_from_secret(KEYS[who], []).key_id


@asynccontextmanager
async def browser_like(client: Client) -> AsyncIterator[Client]:
    """A client for the same gateway with no API key and a cookie jar of its own."""
    async with httpx.AsyncClient(base_url=client.base_url, timeout=10) as http:
        yield http


async def log_in(http: Client, who: str) -> None:
    response = await http.post("/ui/login", data={"key": KEYS[who]})
    assert response.status_code == 303, response.text
    assert http.cookies.get(COOKIE) == KEYS[who]


async def decide(client: Client, customer: str) -> str:
    response = await client.post("/score", json=body(customer, "m-ui"), headers=bearer("scorer"))
    assert response.status_code == 200, response.text
    decision_id: str = response.json()["decision_id"]
    return decision_id


def feature_value(page: str, feature: str) -> str:
    """The value cell of one feature's row, as text."""
    row = re.search(rf'<tr id="feature-{feature}">(.*?)</tr>', page, re.S)
    assert row, f"no row for {feature}"
    value = re.search(r"<code[^>]*>(.*?)</code>", row.group(1), re.S)
    assert value
    return html.unescape(value.group(1))


def test_durations_read_like_a_person_writes_them() -> None:
    assert format_duration(830) == "830 ms"
    assert format_duration(12_345) == "12.3 s"
    assert format_duration(60_000) == "60 s"
    assert format_duration(300_000) == "5 min"
    assert format_duration(3_600_000) == "60 min"
    assert format_duration(86_400_000) == "24 h"
    assert format_duration(3 * 86_400_000) == "3 d"


async def test_login_sets_a_strict_http_only_cookie_and_pages_need_it(client: Client) -> None:
    async with browser_like(client) as http:
        assert (await http.get("/ui")).headers["location"] == "/ui/decisions"
        away = await http.get("/ui/decisions", params={"subject": "c-1"})
        assert away.status_code == 303
        assert away.headers["location"] == "/ui/login?next=/ui/decisions%3Fsubject%3Dc-1"
        form = await http.get(away.headers["location"])
        assert form.status_code == 200
        assert form.headers["content-type"].startswith("text/html")
        assert 'name="key"' in form.text
        assert 'value="/ui/decisions?subject=c-1"' in form.text
        assert "<script" not in form.text

        for wrong_key in ("sk-nobody", ""):
            wrong = await http.post("/ui/login", data={"key": wrong_key})
            assert wrong.status_code == 401
            assert "That key is not valid." in wrong.text
            assert COOKIE not in wrong.headers.get("set-cookie", "")

        scorer = await http.post("/ui/login", data={"key": KEYS["scorer"]})
        assert scorer.status_code == 403
        assert "does not hold the auditor role" in scorer.text
        assert COOKIE not in http.cookies

        landed = await http.post(
            "/ui/login", data={"key": KEYS["auditor"], "next": "/ui/decisions?subject=c-1"}
        )
        assert landed.status_code == 303
        assert landed.headers["location"] == "/ui/decisions?subject=c-1"
        cookie = landed.headers["set-cookie"].lower()
        assert f"{COOKIE}={KEYS['auditor']}".lower() in cookie
        assert {"httponly", "samesite=strict", "path=/ui"} <= {
            part.strip() for part in cookie.split(";")
        }
        page = await http.get("/ui/decisions")
        assert page.status_code == 200
        assert key_id("auditor") in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in page.headers["content-security-policy"]

        elsewhere = await http.post(
            "/ui/login", data={"key": KEYS["auditor"], "next": "https://elsewhere.example/"}
        )
        assert elsewhere.headers["location"] == "/ui/decisions"

        out = await http.post("/ui/logout")
        assert out.status_code == 303
        assert out.headers["location"] == "/ui/login"
        assert COOKIE not in http.cookies
        assert (await http.get("/ui/decisions")).status_code == 303

    async with browser_like(client) as http:
        forged = await http.get("/ui/decisions", headers={"Cookie": f"{COOKIE}=sk-nobody"})
        assert forged.status_code == 303
        # The API's bearer key does not open the pages; the pages' cookie is their key.
        bearing = await http.get("/ui/decisions", headers=bearer("admin"))
        assert bearing.status_code == 303


async def test_a_key_without_the_auditor_role_gets_a_403_page(client: Client) -> None:
    decision_id = await decide(client, "c-ui-403")
    async with browser_like(client) as http:
        for path in ("/ui/decisions", f"/ui/decisions/{decision_id}"):
            response = await http.get(path, headers={"Cookie": f"{COOKIE}={KEYS['scorer']}"})
            assert response.status_code == 403
            assert response.headers["content-type"].startswith("text/html")
            assert "does not hold the auditor role" in response.text
        operator = await http.get(
            "/ui/decisions", headers={"Cookie": f"{COOKIE}={KEYS['operator']}"}
        )
        assert operator.status_code == 403
    log = await client.get(f"/decisions/{decision_id}/access-log", headers=bearer("auditor"))
    assert log.json()["entries"] == []


async def test_pii_is_masked_on_the_page_without_the_scope(client: Client) -> None:
    await seed(client, "c-ui-pii", "m-ui", timedelta(seconds=1))
    decision_id = await decide(client, "c-ui-pii")
    api = await client.get(f"/decisions/{decision_id}", headers=bearer("auditor"))
    masked = api.json()["features"]["account_age_days"]["value"]
    assert masked.startswith("***")

    seen = {}
    for who in ("auditor", "auditor_pii", "admin"):
        async with browser_like(client) as http:
            await log_in(http, who)
            page = await http.get(f"/ui/decisions/{decision_id}")
            assert page.status_code == 200, page.text
            seen[who] = feature_value(page.text, "account_age_days")
            assert feature_value(page.text, "kyc_level") == "3"
            assert "<script" not in page.text
    assert seen == {"auditor": masked, "auditor_pii": "700", "admin": "700"}


async def test_page_reads_are_in_the_access_log_via_ui(client: Client) -> None:
    await seed(client, "c-ui-log", "m-ui", timedelta(seconds=1))
    decision_id = await decide(client, "c-ui-log")
    async with browser_like(client) as http:
        await log_in(http, "auditor")
        # A search lists summaries; it is not a read of the context.
        found = await http.get("/ui/decisions", params={"subject": "c-ui-log"})
        assert f'href="/ui/decisions/{decision_id}"' in found.text
        page = await http.get(f"/ui/decisions/{decision_id}", params={"purpose": "complaint <#77>"})
        assert page.status_code == 200
        # The page shows its own read, escaped.
        assert "complaint &lt;#77&gt;" in page.text
        assert "complaint <#77>" not in page.text
        await log_in(http, "auditor_pii")
        assert (await http.get(f"/ui/decisions/{decision_id}")).status_code == 200
        missing = await http.get(f"/ui/decisions/{MISSING}")
        assert missing.status_code == 404
        assert "text/html" in missing.headers["content-type"]
        assert f"no decision {MISSING}" in missing.text
        assert (await http.get("/ui/decisions/not-a-decision")).status_code == 404

    log = await client.get(f"/decisions/{decision_id}/access-log", headers=bearer("auditor"))
    entries = [(e["key_id"], e["via"], e["purpose"]) for e in log.json()["entries"]]
    assert entries == [
        (key_id("auditor"), "ui", "complaint <#77>"),
        (key_id("auditor_pii"), "ui", None),
    ]


async def test_search_page_filters_and_pages_with_a_cursor(client: Client) -> None:
    await seed(client, "c-ui-s1", "m-ui", timedelta(seconds=1))
    await seed(client, "c-ui-s2", "m-ui", timedelta(seconds=1))
    ours = [await decide(client, "c-ui-s1") for _ in range(3)]
    other = await decide(client, "c-ui-s2")

    def listed(text: str) -> list[str]:
        return re.findall(r'href="/ui/decisions/([0-9a-f-]{36})', text)

    async with browser_like(client) as http:
        await log_in(http, "auditor")
        first = await http.get(
            "/ui/decisions", params={"subject": "c-ui-s1", "limit": 2, "purpose": "audit Q4"}
        )
        assert listed(first.text) == [ours[2], ours[1]]
        assert f'href="/ui/decisions/{ours[2]}?purpose=audit+Q4"' in first.text
        following = re.search(r'href="([^"]+)" rel="next"', first.text)
        assert following, first.text
        second = await http.get(html.unescape(following.group(1)))
        assert second.status_code == 200
        assert listed(second.text) == [ours[0]]
        assert 'rel="next"' not in second.text

        everything = await http.get("/ui/decisions", params={"model": "fraud", "status": "made"})
        assert set(listed(everything.text)) == {*ours, other}
        none = await http.get("/ui/decisions", params={"since": "2999-01-01T00:00"})
        assert "No decisions match." in none.text
        for params, blamed in (
            ({"cursor": "not-a-cursor"}, "cursor"),
            ({"status": "lost"}, "status"),
            ({"since": "yesterday"}, "since"),
            ({"subject": "x" * 200}, "subject"),
            ({"limit": "0"}, "limit"),
        ):
            bad = await http.get("/ui/decisions", params=params)
            assert bad.status_code == 400, params
            assert bad.headers["content-type"].startswith("text/html")
            assert blamed in bad.text


@pytest.fixture
async def held(settings: GatewaySettings) -> AsyncIterator[Client]:
    """A gateway whose relay does not run: its events stay in the outbox."""
    async with serve(create_app(msgspec.structs.replace(settings, run_relay=False))) as http:
        yield http


async def test_timeline_shows_dead_letters_redrives_and_the_rollback(
    held: Client, pg: asyncpg.Connection
) -> None:
    decision_id = await decide(held, "c-ui-dlq")
    event_id = await pg.fetchval(DEAD_LETTER, uuid.UUID(decision_id))
    redrive = await held.post(f"/dlq/{event_id}/redrive", headers=bearer("operator"))
    assert redrive.status_code == 200, redrive.text
    rollback = await held.post(
        f"/decisions/{decision_id}/rollback",
        json={"reason": "customer contested"},
        headers=bearer("operator"),
    )
    assert rollback.status_code == 200

    async with browser_like(held) as http:
        await log_in(http, "auditor")
        page = (await http.get(f"/ui/decisions/{decision_id}")).text
    timeline = re.search(r'<ol class="timeline">(.*?)</ol>', page, re.S)
    assert timeline
    stages = re.findall(r'<li class="([a-z_]+)">', timeline.group(1))
    assert stages == ["committed", "dead_lettered", "redriven", "rolled_back", "committed"]
    steps = html.unescape(re.sub(r"<[^>]+>", " ", timeline.group(1)))
    assert "TopicAuthorizationFailedError: denied" in steps
    assert "partition 0, offset 7" in steps
    assert f"by {key_id('operator')}: customer contested" in steps
    assert "rolled back" in page


async def wait_published(pg: asyncpg.Connection, decision_id: str, events: int) -> None:
    for _ in range(200):
        published = await pg.fetchval(
            "SELECT count(*) FROM writeback_timeline"
            " WHERE decision_id = $1 AND stage = 'published'",
            uuid.UUID(decision_id),
        )
        if published == events:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{decision_id}: {events} events were not published")


async def test_a_person_reads_a_real_decision_in_headless_chromium(
    client: Client, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: bash .ci/setup installs chromium"
    await seed(client, "c-ui-person", "m-ui", timedelta(seconds=12))
    decision_id = await decide(client, "c-ui-person")
    record = (
        await client.get(
            f"/decisions/{decision_id}", headers={**bearer("admin"), "X-Purpose": "first look"}
        )
    ).json()
    rollback = await client.post(
        f"/decisions/{decision_id}/rollback",
        json={"reason": "customer contested the decision"},
        headers=bearer("operator"),
    )
    assert rollback.status_code == 200
    await wait_published(pg, decision_id, events=2)

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
            await page.goto(f"{client.base_url}/ui/decisions")
            await expect(page).to_have_url(re.compile(r"/ui/login"))
            await page.get_by_label("API key").fill(KEYS["auditor"])
            await page.get_by_role("button", name="Log in").click()
            await expect(page).to_have_url(re.compile(r"/ui/decisions$"))

            await page.get_by_label("Subject id").fill("c-ui-person")
            await page.get_by_label("Purpose of reading").fill("chargeback dispute #881")
            await page.get_by_role("button", name="Search").click()
            await page.get_by_role("link", name=decision_id).click()
            await expect(page).to_have_url(re.compile(rf"/ui/decisions/{decision_id}\?purpose="))

            await expect(page.locator(".decision-label")).to_have_text(record["decision"])
            await expect(page.get_by_role("heading", level=1)).to_contain_text(decision_id)
            for name, feature in record["features"].items():
                row = page.locator(f"#feature-{name}")
                await expect(row).to_contain_text(name)
                await expect(row.locator(".badge")).to_have_text(feature["status"])
            # The bar shows the staleness recorded at scoring time, however long that took.
            recorded = record["features"]["txn_count_30m"]
            staleness, sla = recorded["staleness_ms"], recorded["max_staleness_ms"]
            txn = page.locator("#feature-txn_count_30m")
            await expect(txn.locator(".bar-text")).to_have_text(
                f"{format_duration(staleness)} of {format_duration(sla)}"
            )
            fill = await txn.locator(".bar > span").bounding_box()
            track = await txn.locator(".bar").bounding_box()
            assert fill and track
            share = min(1, staleness / sla)
            assert fill["width"] / track["width"] == pytest.approx(share, abs=0.02)
            await expect(txn).to_contain_text("orders-cdc:42")
            await expect(txn).to_contain_text(record["features"]["txn_count_30m"]["lineage_id"])
            age = page.locator("#feature-account_age_days")
            await expect(age).to_contain_text("***")
            await expect(age).not_to_contain_text("700")

            timeline = page.locator("ol.timeline li")
            await expect(timeline).to_have_count(5)
            await expect(page.locator("ol.timeline li.published")).to_have_count(2)
            await expect(page.locator("ol.timeline li.rolled_back")).to_contain_text(
                "customer contested the decision"
            )
            reads = page.locator("section", has=page.get_by_role("heading", name="Access log"))
            await expect(reads.locator("tbody tr")).to_have_count(2)
            await expect(reads.locator("tbody tr").nth(0)).to_contain_text("first look")
            mine = reads.locator("tbody tr").nth(1)
            await expect(mine).to_contain_text(key_id("auditor"))
            await expect(mine).to_contain_text("ui")
            await expect(mine).to_contain_text("chargeback dispute #881")

            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=SCREENSHOT, full_page=True)
        finally:
            await context.close()
    assert SCREENSHOT.stat().st_size > 10_000
