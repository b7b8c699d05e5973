"""``request_id`` as an idempotency key: concurrent duplicates share one scoring, a key
reused for a different request is a 409 naming what differs, and a new key costs no
query before its commit.

Model calls are counted by the sample model server itself (rows scored). Where a test
needs requests to overlap, the feature assembly waits until they all have arrived,
so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

import writeback.pool
from contracts.events import DECISION_MADE
from gateway.app import create_app
from gateway.features.assembler import FeatureAssembler
from gateway.scoring import Scorer
from gateway.settings import GatewaySettings
from tests.support.gateway import serve
from tests.support.keys import bearer
from tests.support.sample import SampleServers
from tests.support.scoring import body, seed
from writeback.audit_store import _COMMIT_BATCH, _FIND_BY_REQUEST

pytestmark = pytest.mark.services

Client = httpx.AsyncClient


@pytest.fixture
def registry_path(registry_path: Path) -> Path:
    """The sample registry with a long deadline: held assemblies must not run out of it."""
    text = registry_path.read_text()
    marker = 'owner = "fraud-ml"\n'
    assert marker in text
    registry_path.write_text(text.replace(marker, marker + "deadline_ms = 30000\n", 1))
    return registry_path


async def model_rows(servers: SampleServers) -> int:
    async with servers.http.get(f"{servers.model_url}/_stats") as resp:
        rows: int = (await resp.json())["rows"]
        return rows


class Gate:
    """Counts arrivals at a point and holds feature assemblies until enough arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.assemblies = 0
        self.open = asyncio.Event()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.open.set()

    async def wait(self) -> None:
        async with asyncio.timeout(20):
            await self.open.wait()


def hold(monkeypatch: pytest.MonkeyPatch, gate: Gate, count: str) -> None:
    """Hold every assembly at ``gate``; arrivals count at ``score`` or ``assemble``."""
    assemble = FeatureAssembler.assemble
    score = Scorer.score

    async def arriving_score(self: Scorer, *args: Any, **kwargs: Any) -> Any:
        if count == "score":
            gate.arrive()
        return await score(self, *args, **kwargs)

    async def held_assemble(self: FeatureAssembler, *args: Any, **kwargs: Any) -> Any:
        gate.assemblies += 1
        if count == "assemble":
            gate.arrive()
        await gate.wait()
        return await assemble(self, *args, **kwargs)

    monkeypatch.setattr(Scorer, "score", arriving_score)
    monkeypatch.setattr(FeatureAssembler, "assemble", held_assemble)


async def test_concurrent_duplicates_share_one_assembly_and_one_model_call(
    client: Client, servers: SampleServers, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(client, "c-sf", "m-sf", timedelta(seconds=1))
    gate = Gate(expected=8)
    hold(monkeypatch, gate, count="score")
    request = body("c-sf", "m-sf", request_id="sf-1")

    answers = await asyncio.gather(*(client.post("/score", json=request) for _ in range(8)))

    assert [a.status_code for a in answers] == [200] * 8, answers[0].text
    assert len({a.json()["decision_id"] for a in answers}) == 1
    assert gate.assemblies == 1
    assert await model_rows(servers) == 1
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 1
    # Settled: a later retry finds the committed decision and scores nothing.
    again = await client.post("/score", json=request)
    assert again.json() == answers[0].json()
    assert gate.assemblies == 1
    assert await model_rows(servers) == 1


async def test_retry_with_another_body_is_409_naming_what_differs(
    client: Client, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-rb", "m-rb", timedelta(seconds=1))
    request = body("c-rb", "m-rb", request_id="order-9")
    first = await client.post("/score", json=request, headers=bearer("scorer"))
    assert first.status_code == 200, first.text

    changed_amount = {**request, "context": {"amount": 999.0, "card_present": False}}
    changed_both = {
        **changed_amount,
        "entities": {"customer_id": "c-rb", "merchant_id": "m-other"},
    }
    for changed, fields in (
        (changed_amount, ["context.amount"]),
        (changed_both, ["entities.merchant_id", "context.amount"]),
    ):
        refused = await client.post("/score", json=changed, headers=bearer("scorer"))
        assert refused.status_code == 409, refused.text
        error = refused.json()
        assert error["field"] == fields[0]
        assert error["extra"] == {"request_id": "order-9", "differs": fields}
        assert "order-9" in error["detail"]

    # The same request with its context in another order is the same request.
    reordered = {**request, "context": {"card_present": False, "amount": 120.5}}
    answer = await client.post("/score", json=reordered, headers=bearer("scorer"))
    assert answer.json() == first.json()
    # A float64 sent as 40 and then as 40.0 is one value.
    whole = body(
        "c-rb", "m-rb", request_id="order-10", context={"amount": 40, "card_present": True}
    )
    made = await client.post("/score", json=whole, headers=bearer("scorer"))
    assert made.status_code == 200, made.text
    whole_again = {**whole, "context": {"amount": 40.0, "card_present": True}}
    answer = await client.post("/score", json=whole_again, headers=bearer("scorer"))
    assert answer.json() == made.json()
    # Another caller's key space is its own.
    other = await client.post("/score", json=changed_amount, headers=bearer("scorer2"))
    assert other.status_code == 200, other.text

    assert await model_rows(servers) == 3
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 3


async def test_different_body_while_the_first_is_in_flight_is_409(
    client: Client, servers: SampleServers, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(client, "c-if", "m-if", timedelta(seconds=1))
    gate = Gate(expected=2)
    hold(monkeypatch, gate, count="score")
    first = body("c-if", "m-if", request_id="if-1")
    second = {**first, "context": {"amount": 1.0, "card_present": False}}

    answers = await asyncio.gather(
        client.post("/score", json=first), client.post("/score", json=second)
    )

    assert sorted(a.status_code for a in answers) == [200, 409]
    [refused] = [a for a in answers if a.status_code == 409]
    assert refused.json()["field"] == "context.amount"
    assert gate.assemblies == 1
    assert await model_rows(servers) == 1
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 1


@pytest.fixture
async def second_gateway(settings: GatewaySettings) -> AsyncIterator[Client]:
    """Another gateway process's view: its own app on the same database."""
    async with serve(create_app(settings)) as http:
        yield http


async def test_across_processes_the_commit_refuses_a_different_body(
    client: Client,
    second_gateway: Client,
    servers: SampleServers,
    pg: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed(client, "c-xp", "m-xp", timedelta(seconds=1))
    # Both gateways score before either commits: the unique key decides.
    gate = Gate(expected=2)
    hold(monkeypatch, gate, count="assemble")
    first = body("c-xp", "m-xp", request_id="xp-1")
    second = {**first, "context": {"amount": 1.0, "card_present": False}}

    answers = await asyncio.gather(
        client.post("/score", json=first), second_gateway.post("/score", json=second)
    )

    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    [refused] = [a for a in answers if a.status_code == 409]
    assert refused.json()["field"] == "context.amount"
    assert await model_rows(servers) == 2
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 1

    # The same body from both: one decision, both answers carry it.
    monkeypatch.undo()
    gate = Gate(expected=2)
    hold(monkeypatch, gate, count="assemble")
    same = body("c-xp", "m-xp", request_id="xp-2")
    answers = await asyncio.gather(
        client.post("/score", json=same), second_gateway.post("/score", json=same)
    )
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["decision_id"] == answers[1].json()["decision_id"]
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 2


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement sent on the connections of pools opened from here on."""
    sent: list[str] = []
    init = writeback.pool.register_jsonb_codec

    async def logging_init(conn: asyncpg.Connection) -> None:
        await init(conn)
        conn.add_query_logger(lambda logged: sent.append(logged.query))

    monkeypatch.setattr(writeback.pool, "register_jsonb_codec", logging_init)
    return sent


async def outbox_rows(pg: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await pg.fetch("SELECT decision_id::text, event_type FROM outbox ORDER BY seq")
    return [(row["decision_id"], row["event_type"]) for row in rows]


async def test_a_new_request_id_costs_no_query_before_its_commit(
    statements: list[str], settings: GatewaySettings, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    async with serve(create_app(settings)) as first, serve(create_app(settings)) as second:
        await seed(first, "c-nq", "m-nq", timedelta(seconds=1))
        statements.clear()
        made = []
        for n in range(3):
            answer = await first.post("/score", json=body("c-nq", "m-nq", request_id=f"nq-{n}"))
            assert answer.status_code == 200, answer.text
            made.append(answer.json())

        assert statements.count(_COMMIT_BATCH) == 3
        assert _FIND_BY_REQUEST not in statements

        # A retry through the other gateway is scored again; its commit finds the key
        # taken, writes nothing, and reads the first decision: the one lookup here.
        retry = await second.post("/score", json=body("c-nq", "m-nq", request_id="nq-0"))
        assert retry.json() == made[0]
        assert statements.count(_FIND_BY_REQUEST) == 1
        # A retry through the gateway that answered is answered from memory.
        again = await first.post("/score", json=body("c-nq", "m-nq", request_id="nq-1"))
        assert again.json() == made[1]
        assert statements.count(_COMMIT_BATCH) == 4
        assert statements.count(_FIND_BY_REQUEST) == 1

    assert await model_rows(servers) == 4
    ids = [answer["decision_id"] for answer in made]
    decisions = await pg.fetch("SELECT decision_id::text FROM decisions ORDER BY decided_at")
    assert [row["decision_id"] for row in decisions] == ids
    assert await outbox_rows(pg) == [(decision_id, DECISION_MADE) for decision_id in ids]


async def test_a_retry_through_another_gateway_gets_the_committed_decision(
    client: Client, second_gateway: Client, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-rg", "m-rg", timedelta(seconds=1))
    request = body("c-rg", "m-rg", request_id="rg-1")
    first = await client.post("/score", json=request, headers=bearer("scorer"))
    assert first.status_code == 200, first.text

    retry = await second_gateway.post("/score", json=request, headers=bearer("scorer"))
    assert retry.json() == first.json()
    changed = {**request, "context": {"amount": 5.0, "card_present": False}}
    for gateway in (second_gateway, client):
        refused = await gateway.post("/score", json=changed, headers=bearer("scorer"))
        assert refused.status_code == 409, refused.text
        assert refused.json()["field"] == "context.amount"
        assert refused.json()["extra"] == {"request_id": "rg-1", "differs": ["context.amount"]}

    assert await pg.fetchval("SELECT count(*) FROM decisions") == 1
    assert await outbox_rows(pg) == [(first.json()["decision_id"], DECISION_MADE)]


async def test_a_retry_while_the_model_is_down_gets_the_committed_decision(
    client: Client, second_gateway: Client, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-md", "m-md", timedelta(seconds=1))
    request = body("c-md", "m-md", request_id="md-1")
    first = await client.post("/score", json=request)
    assert first.status_code == 200, first.text
    await servers.fault_model("error")

    retry = await second_gateway.post("/score", json=request)
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    changed = {**request, "context": {"amount": 5.0, "card_present": False}}
    refused = await second_gateway.post("/score", json=changed)
    assert refused.status_code == 409, refused.text
    assert refused.json()["field"] == "context.amount"
    # An id never committed gets the model's failure.
    new = await second_gateway.post("/score", json=body("c-md", "m-md", request_id="md-2"))
    assert new.status_code == 503, new.text
    assert new.json()["field"] == "model"

    assert await pg.fetchval("SELECT count(*) FROM decisions") == 1
    assert await outbox_rows(pg) == [(first.json()["decision_id"], DECISION_MADE)]
