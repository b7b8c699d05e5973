"""Audit: every read logged, keyset search, replay, and the hash chain catching an edit."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.auth import key_from_secret
from gateway.settings import GatewaySettings
from tests.support.keys import KEYS, bearer
from tests.support.sample import SampleServers
from tests.support.scoring import body, seed

pytestmark = pytest.mark.services

Client = httpx.AsyncClient


def key_id(who: str) -> str:
    return key_from_secret(KEYS[who], []).key_id


async def decide(client: Client, customer: str, merchant: str = "m-a", **extra: Any) -> str:
    response = await client.post(
        "/score", json=body(customer, merchant, **extra), headers=bearer("scorer")
    )
    assert response.status_code == 200, response.text
    decision_id: str = response.json()["decision_id"]
    return decision_id


async def test_every_read_of_a_decision_is_logged(client: Client) -> None:
    await seed(client, "c-a1", "m-a", timedelta(seconds=1))
    decision_id = await decide(client, "c-a1")
    headers = {**bearer("auditor"), "X-Purpose": "chargeback dispute #881"}
    assert (await client.get(f"/decisions/{decision_id}", headers=headers)).status_code == 200
    assert (
        await client.get(f"/decisions/{decision_id}", headers=bearer("admin"))
    ).status_code == 200
    replay = await client.post(f"/decisions/{decision_id}/replay", headers=bearer("operator"))
    assert replay.status_code == 200
    # Searching lists summaries; it is not a read of the context.
    assert (
        await client.get("/decisions?subject=c-a1", headers=bearer("auditor"))
    ).status_code == 200

    log = (
        await client.get(f"/decisions/{decision_id}/access-log", headers=bearer("auditor"))
    ).json()
    entries = [(e["key_id"], e["via"], e["purpose"]) for e in log["entries"]]
    assert entries == [
        (key_id("auditor"), "api", "chargeback dispute #881"),
        (key_id("admin"), "api", None),
        (key_id("operator"), "replay", None),
    ]
    forbidden = await client.get(f"/decisions/{decision_id}/access-log", headers=bearer("scorer"))
    assert forbidden.status_code == 403
    missing = await client.get(
        "/decisions/01a20000-0000-7000-8000-000000000000/access-log", headers=bearer("auditor")
    )
    assert missing.status_code == 404


async def test_search_pages_with_a_cursor_newest_first(client: Client) -> None:
    await seed(client, "c-s1", "m-a", timedelta(seconds=1))
    await seed(client, "c-s2", "m-a", timedelta(seconds=1))
    ours = [await decide(client, "c-s1") for _ in range(7)]
    others = [await decide(client, "c-s2") for _ in range(2)]
    auditor = bearer("auditor")

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "/decisions?subject=c-s1&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(query, headers=auditor)).json()
        pages += 1
        seen += [item["decision_id"] for item in page["items"]]
        assert all(item["subject"]["id"] == "c-s1" for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ours))  # UUIDv7 ids sort by time, as decisions do

    everything = (await client.get("/decisions?model=fraud&limit=100", headers=auditor)).json()
    assert {i["decision_id"] for i in everything["items"]} == set(ours) | set(others)
    assert everything["next_cursor"] is None

    rolled = ours[0]
    await client.post(
        f"/decisions/{rolled}/rollback", json={"reason": "test"}, headers=bearer("operator")
    )
    page = (await client.get("/decisions?status=rolled_back", headers=auditor)).json()
    assert [i["decision_id"] for i in page["items"]] == [rolled]
    assert page["items"][0]["status"] == "rolled_back"
    made = (await client.get("/decisions?status=made&limit=100", headers=auditor)).json()
    assert rolled not in {i["decision_id"] for i in made["items"]}
    future = (await client.get("/decisions?since=2999-01-01T00:00:00Z", headers=auditor)).json()
    assert future["items"] == []

    bad = await client.get("/decisions?cursor=not-a-cursor", headers=auditor)
    assert bad.status_code == 400
    assert bad.json()["field"] == "cursor"
    assert (await client.get("/decisions?limit=0", headers=auditor)).status_code == 400
    assert (await client.get("/decisions?status=lost", headers=auditor)).status_code == 400


async def test_replay_matches_and_writes_nothing_but_the_read(
    client: Client, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-r1", "m-a", timedelta(seconds=1))
    decision_id = await decide(client, "c-r1")
    before = (
        await pg.fetchval("SELECT count(*) FROM decisions"),
        await pg.fetchval("SELECT count(*) FROM outbox"),
    )
    operator = bearer("operator")
    result = (await client.post(f"/decisions/{decision_id}/replay", headers=operator)).json()
    assert result["match"] is True
    assert result["original"]["outputs"] == result["replayed"]["outputs"]
    assert result["replayed"]["model"] == {"name": "fraud", "version": "3"}
    pinned = await client.post(
        f"/decisions/{decision_id}/replay", json={"model_version": "3"}, headers=operator
    )
    assert pinned.json()["match"] is True
    unknown = await client.post(
        f"/decisions/{decision_id}/replay", json={"model_version": "99"}, headers=operator
    )
    # The caller chose a version the model server lacks: theirs to change, not a 5xx.
    assert unknown.status_code == 409
    assert unknown.json()["field"] == "model_version"
    after = (
        await pg.fetchval("SELECT count(*) FROM decisions"),
        await pg.fetchval("SELECT count(*) FROM outbox"),
    )
    assert after == before
    assert await pg.fetchval("SELECT count(*) FROM decision_reads WHERE via = 'replay'") == 3
    auditor = await client.post(f"/decisions/{decision_id}/replay", headers=bearer("auditor"))
    assert auditor.status_code == 403


async def verified(client: Client) -> dict[str, Any]:
    """The verify report once every decision is sealed."""
    for _ in range(100):
        report: dict[str, Any] = (
            await client.get("/audit/verify", headers=bearer("auditor"))
        ).json()
        if report["unsealed"] == 0:
            return report
        await asyncio.sleep(0.1)
    raise AssertionError(f"decisions were not sealed: {report}")


async def test_verify_finds_the_record_edited_behind_the_gateways_back(
    client: Client, pg: asyncpg.Connection, settings: GatewaySettings
) -> None:
    await seed(client, "c-v1", "m-a", timedelta(seconds=1))
    ids = [await decide(client, "c-v1") for _ in range(5)]
    report = await verified(client)
    assert report["ok"] is True
    assert report["checked"] == 5

    tampered = ids[2]
    await pg.execute(
        """UPDATE decisions SET record = replace(record::text, '"degraded":false',
           '"degraded":true')::json WHERE decision_id = $1::uuid""",
        tampered,
    )
    report = await verified(client)
    assert report["ok"] is False
    assert report["first_mismatch"] == tampered
    assert report["reason"] == "record does not match its seal"
    assert report["checked"] == 2

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "audit",
        "verify",
        env={**os.environ, "SCOREGATE_DATABASE_URL": settings.writeback.database_url},
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await process.communicate()
    assert process.returncode == 1
    assert tampered in output.decode()

    await pg.execute("DELETE FROM decisions WHERE decision_id = $1::uuid", ids[1])
    report = await verified(client)
    assert report["first_mismatch"] == ids[1]
    assert report["reason"] == "record is missing"


async def test_pii_scope_is_needed_to_see_pii_in_replays_and_search(
    client: Client, servers: SampleServers
) -> None:
    await seed(client, "c-p1", "m-a", timedelta(seconds=1))
    decision_id = await decide(client, "c-p1")
    page = (await client.get("/decisions?subject=c-p1", headers=bearer("auditor"))).json()
    # Summaries carry no feature values at all.
    assert "features" not in page["items"][0]
    record = (await client.get(f"/decisions/{decision_id}", headers=bearer("auditor"))).json()
    assert str(record["features"]["account_age_days"]["value"]).startswith("***")
