"""Outcome events on the broker, read by an independent consumer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest

from contracts.events import DecisionMade, DecisionRolledBack, OutcomeEvent
from scoregate_dev.broker import LocalBroker
from tests.support.scoring import body, seed
from tests.support.services import consume

pytestmark = pytest.mark.services

Client = httpx.AsyncClient


async def test_each_decision_is_published_once_as_a_cloudevent(
    client: Client, broker: LocalBroker, topic: str
) -> None:
    await seed(client, "c-20", "m-20", timedelta(seconds=1))
    answers = await asyncio.gather(
        *(client.post("/score", json=body("c-20", "m-20")) for _ in range(10))
    )
    decision_ids = {a.json()["decision_id"] for a in answers}
    records = await consume(broker.bootstrap, topic, expected=10)
    assert len(records) == 10
    ce_ids = set()
    for record in records:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_type"] == "scoregate.decision.made"
        assert headers["ce_source"] == "/scoregate"
        assert headers["content-type"] == "application/json"
        assert headers["ce_subject"] in decision_ids
        datetime.fromisoformat(headers["ce_time"])
        ce_ids.add(headers["ce_id"])
        assert record.key == b"c-20"
        event = msgspec.json.decode(record.value, type=OutcomeEvent)
        assert isinstance(event, DecisionMade)
        assert event.decision_id == headers["ce_subject"]
        assert event.subject.id == "c-20"
    assert len(ce_ids) == 10
    # Delivery is recorded on the decision, with where the event landed.
    some = next(iter(decision_ids))
    for _ in range(50):
        writeback = (await client.get(f"/decisions/{some}")).json()["writeback"][0]
        if writeback["status"] == "delivered":
            break
        await asyncio.sleep(0.05)
    assert writeback["status"] == "delivered"
    assert writeback["partition"] is not None
    assert writeback["offset"] is not None
    assert writeback["event_id"] in ce_ids


async def test_rollback_event_follows_its_decision_once(
    client: Client, broker: LocalBroker, topic: str
) -> None:
    await seed(client, "c-21", "m-21", timedelta(seconds=1))
    decision_id = (await client.post("/score", json=body("c-21", "m-21"))).json()["decision_id"]
    # Roll back at once, concurrently and twice: the relay may not have published yet.
    rollbacks = await asyncio.gather(
        *(
            client.post(f"/decisions/{decision_id}/rollback", json={"reason": "fraud confirmed"})
            for _ in range(3)
        )
    )
    assert len({r.json()["event_id"] for r in rollbacks}) == 1
    records = await consume(broker.bootstrap, topic, expected=2)
    assert [dict(r.headers)["ce_type"] for r in records] == [
        b"scoregate.decision.made",
        b"scoregate.decision.rolled_back",
    ]
    assert records[0].partition == records[1].partition
    assert records[0].offset < records[1].offset
    rolled_back = msgspec.json.decode(records[1].value, type=OutcomeEvent)
    assert isinstance(rolled_back, DecisionRolledBack)
    assert rolled_back.decision_id == decision_id
    assert rolled_back.reason == "fraud confirmed"
    assert dict(records[1].headers)["ce_id"].decode() == rollbacks[0].json()["event_id"]
    assert datetime.now(UTC) - rolled_back.rolled_back_at < timedelta(minutes=1)
