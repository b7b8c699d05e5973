"""Bad input is the caller's: a 400 naming the field, never a 5xx, over real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from gateway.app import create_app
from gateway.features.online_store import StoredValue
from gateway.settings import GatewaySettings
from tests.support.gateway import serve
from tests.support.keys import bearer
from tests.support.sample import SampleServers
from tests.support.scoring import CUSTOMER_FEATURES, body, seed

pytestmark = pytest.mark.services

Client = httpx.AsyncClient


def blamed(response: httpx.Response) -> Any:
    assert response.status_code == 400, response.text
    return response.json().get("field")


async def test_a_wrong_value_in_a_dict_names_its_key(client: Client) -> None:
    wrong_context = body(context={"amount": [120.5], "card_present": False})
    assert blamed(await client.post("/score", json=wrong_context)) == "context.amount"
    wrong_entity = {**body(), "entities": {"customer_id": "c-1", "merchant_id": 7}}
    assert blamed(await client.post("/score", json=wrong_entity)) == "entities.merchant_id"


async def test_missing_and_unknown_fields_are_named_where_they_are(client: Client) -> None:
    missing = {"entities": {"customer_id": "c-1", "merchant_id": "m-1"}}
    assert blamed(await client.post("/score", json=missing)) == "model"
    push = {
        "entities": {"customer_id": "c-1"},
        "features": {"txn_count_30m": 1},
        "event_time": "2026-01-01T00:00:00Z",
        "lineage": {"source_system": "s", "source_ref": "r", "surprise": 1},
    }
    assert blamed(await client.post("/features/push", json=push)) == "lineage.surprise"
    assert blamed(await client.post("/score", json=[1, 2])) is None


async def test_a_header_is_named_as_the_caller_sends_it(client: Client) -> None:
    response = await client.post("/score", json=body(), headers={"X-Request-Timeout-Ms": "soon"})
    assert blamed(response) == "X-Request-Timeout-Ms"


async def test_search_filters_postgresql_cannot_compare_are_refused(client: Client) -> None:
    for name in ("subject", "model"):
        response = await client.get("/decisions", params={name: "c-1\x00"})
        assert blamed(response) == name
    response = await client.get("/decisions", params={"cursor": "not a cursor!"})
    assert blamed(response) == "cursor"


async def test_a_dead_letter_cursor_past_a_bigint_is_refused(client: Client) -> None:
    response = await client.get("/dlq", params={"cursor": "9" * 19})
    assert blamed(response) == "cursor"
    assert (await client.get("/dlq", params={"cursor": "12"})).status_code == 200


async def test_a_rollback_reason_postgresql_cannot_store_is_a_400(client: Client) -> None:
    await seed(client, "c-bad", "m-bad", timedelta(seconds=5))
    scored = await client.post("/score", json=body("c-bad", "m-bad"))
    decision_id = scored.json()["decision_id"]
    response = await client.post(
        f"/decisions/{decision_id}/rollback",
        json={"reason": "typed a \x00 by mistake"},
        headers=bearer("operator"),
    )
    assert response.status_code == 400, response.text
    fixed = await client.post(
        f"/decisions/{decision_id}/rollback", json={"reason": "typo"}, headers=bearer("operator")
    )
    assert fixed.status_code == 200


async def test_a_request_id_postgresql_cannot_store_is_a_400(
    client: Client, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    for request_id in ("r-\x00", "r-\n1"):
        response = await client.post("/score", json=body("c-bad", "m-bad", request_id=request_id))
        assert blamed(response) == "request_id"
    # Nothing of c-bad is in Redis: any feature work would have called its sources.
    assert not any((await servers.source_calls()).values())
    assert await pg.fetchval("SELECT count(*) FROM decision_requests") == 0
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 0
    assert (await client.post("/score", json=body("c-bad", "m-bad", request_id="r-1"))).is_success


async def test_a_served_lineage_with_a_nul_is_refused_and_search_keeps_working(
    client: Client, pg: asyncpg.Connection, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    await seed(client, "c-ok", "m-nul", timedelta(seconds=5))
    # /features/push refuses such a reference; another writer of the store may not.
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    poisoned = {
        name: msgspec.msgpack.encode(
            StoredValue(value, now_ms, now_ms, "lin_x", "push", "cdc", "cdc:\x00", 1, None)
        )
        for name, value in CUSTOMER_FEATURES.items()
    }
    await redis_client.hset(f"{redis_prefix}:customer:c-nul", mapping=poisoned)  # type: ignore[misc]

    response = await client.post("/score", json=body("c-nul", "m-nul"))

    # Not the scoring caller's value: a 422 that says where in the record it sits.
    assert response.status_code == 422, response.text
    record_field = response.json()["extra"]["record_field"]
    assert record_field.startswith("lineage.")
    assert record_field.endswith(".source_ref")
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 0
    scored = await client.post("/score", json=body("c-ok", "m-nul"))
    assert scored.status_code == 200, scored.text
    search = await client.get("/decisions", headers=bearer("auditor"))
    assert search.status_code == 200, search.text
    assert [item["decision_id"] for item in search.json()["items"]] == [
        scored.json()["decision_id"]
    ]


async def test_a_context_string_with_a_nul_is_refused_before_any_work(
    settings: GatewaySettings, tmp_path: Path, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    text = settings.registry_path.read_text()
    context = '    { name = "card_present", dtype = "bool" },\n'
    assert context in text
    tensor = 'input = { layout = "tensor", name = "input-0", datatype = "FP64" }'
    assert tensor in text
    # A string feature needs named inputs; the model is never reached anyway.
    text = text.replace(tensor, 'input = { layout = "columns" }')
    path = tmp_path / "noted-registry.toml"
    path.write_text(text.replace(context, context + '    { name = "note", dtype = "string" },\n'))
    noted = msgspec.structs.replace(settings, registry_path=path)
    request = body("c-note", "m-note")
    request["context"] = {**request["context"], "note": "call me\x00"}

    async with serve(create_app(noted), who="scorer") as http:
        response = await http.post("/score", json=request)

    assert blamed(response) == "context.note"
    # Nothing of c-note is in Redis: any feature work would have called its sources.
    assert not any((await servers.source_calls()).values())
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 0
