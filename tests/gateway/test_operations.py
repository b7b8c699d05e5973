"""Operators' endpoints over HTTP: the dead-letter queue, its redrive, and /metrics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.support.gateway import serve
from tests.support.keys import bearer
from tests.support.scoring import body

pytestmark = pytest.mark.services

# A dead letter as the relay leaves one; the tests here need one without a poison event.
DEAD_LETTER = """
UPDATE outbox SET status = 'dead_lettered', attempts = 1, dead_letter_reason = 'non_retriable',
    error_class = 'aiokafka.errors.TopicAuthorizationFailedError',
    last_error = 'TopicAuthorizationFailedError: denied', first_failed_at = now(),
    last_failed_at = now(), dead_lettered_at = now(), dlq_topic = topic || '.dlq'
WHERE decision_id = $1
"""


@pytest.fixture
async def held(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose relay does not run: its events stay in the outbox."""
    async with serve(create_app(msgspec.structs.replace(settings, run_relay=False))) as http:
        yield http


async def test_dead_letters_are_listed_and_redriven_by_operators(
    held: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    scored = [(await held.post("/score", json=body(f"c-{n}", "m-1"))).json() for n in range(3)]
    for answer in scored[:2]:
        await pg.execute(DEAD_LETTER, uuid.UUID(answer["decision_id"]))

    assert (await held.get("/dlq", headers=bearer("scorer"))).status_code == 403
    page = (await held.get("/dlq", params={"limit": 1}, headers=bearer("operator"))).json()
    [letter] = page["items"]
    assert letter["decision_id"] == scored[0]["decision_id"]
    assert (letter["status"], letter["reason"], letter["held"]) == (
        "dead_lettered",
        "non_retriable",
        0,
    )
    assert letter["error_class"] == "aiokafka.errors.TopicAuthorizationFailedError"
    rest = await held.get(
        "/dlq", params={"cursor": page["next_cursor"]}, headers=bearer("operator")
    )
    assert [item["decision_id"] for item in rest.json()["items"]] == [scored[1]["decision_id"]]
    assert rest.json()["next_cursor"] is None
    bad = await held.get("/dlq", params={"cursor": "nope"}, headers=bearer("operator"))
    assert (bad.status_code, bad.json()["field"]) == (400, "cursor")

    redriven = await held.post(f"/dlq/{letter['event_id']}/redrive", headers=bearer("operator"))

    assert redriven.status_code == 200
    assert (redriven.json()["status"], redriven.json()["redrives"]) == ("pending", 1)
    again = await held.post(f"/dlq/{letter['event_id']}/redrive", headers=bearer("operator"))
    assert (again.status_code, again.json()["extra"]) == (409, {"status": "pending"})
    unknown = await held.post(f"/dlq/{uuid.uuid4()}/redrive", headers=bearer("operator"))
    assert unknown.status_code == 404
    waiting = await pg.fetchval(
        "SELECT event_id FROM outbox WHERE decision_id = $1", uuid.UUID(scored[2]["decision_id"])
    )
    pending = await held.post(f"/dlq/{waiting}/redrive", headers=bearer("operator"))
    assert pending.status_code == 409
    denied = await held.post(f"/dlq/{letter['event_id']}/redrive", headers=bearer("scorer"))
    assert denied.status_code == 403
    record = (await held.get(f"/decisions/{scored[0]['decision_id']}")).json()
    assert [entry["stage"] for entry in record["timeline"]] == ["committed", "redriven"]
    assert record["timeline"][1]["actor"]
    assert record["writeback"][0]["redrives"] == 1


async def test_metrics_in_prometheus_text_format(
    client: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    answers = [(await client.post("/score", json=body(f"c-{n}", "m-1"))).json() for n in range(4)]
    async with asyncio.timeout(10):
        while await pg.fetchval("SELECT count(*) FROM outbox WHERE status = 'pending'"):
            await asyncio.sleep(0.05)
    # Marked once the relay is done with it: a row it holds would be recorded over.
    await pg.execute(DEAD_LETTER, uuid.UUID(answers[0]["decision_id"]))

    response = await client.get("/metrics", headers={})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = {s.name: s.value for f in families.values() for s in f.samples}
    assert families["scoregate_outbox_lag_seconds"].type == "gauge"
    assert samples["scoregate_outbox_lag_seconds"] == 0
    assert samples["scoregate_outbox_pending_events"] == 0
    assert samples["scoregate_dead_letter_queue_depth"] == 1
    latency = families["scoregate_outbox_commit_to_publish_seconds"]
    assert latency.type == "histogram"
    assert samples["scoregate_outbox_commit_to_publish_seconds_count"] >= 3
    assert families["scoregate_relay_publish_duration_seconds"].type == "histogram"
    assert samples["scoregate_relay_events_published_total"] >= 3
    assert "scoregate_relay_events_dead_lettered" in families


async def test_metrics_behind_the_operator_role_when_not_public(
    settings: GatewaySettings,
) -> None:
    private = msgspec.structs.replace(settings, metrics_public=False, run_relay=False)
    async with serve(create_app(private), who="operator") as http:
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/metrics", headers=bearer("scorer"))).status_code == 403
        anonymous = await http.get("/metrics", headers={"Authorization": ""})
        assert anonymous.status_code == 401
