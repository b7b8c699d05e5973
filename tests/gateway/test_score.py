"""``/score`` end to end against real Redis, PostgreSQL, the broker, sample sources and
the sample model server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from gateway.app import create_app
from gateway.auth import key_from_secret
from gateway.features.online_store import StoredValue
from gateway.settings import GatewaySettings
from tests.support.gateway import registry_variant, roomy, serve
from tests.support.keys import KEYS, bearer
from tests.support.sample import SampleServers
from tests.support.scoring import body, push, seed

pytestmark = pytest.mark.services

Client = httpx.AsyncClient


async def test_fresh_features_come_from_redis_in_one_round_trip(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(client, "c-1", "m-1", timedelta(seconds=5))
    sent: list[int] = []
    original = Connection.send_packed_command

    async def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    response = await client.post("/score", json=body())
    monkeypatch.undo()
    assert response.status_code == 200, response.text
    # Two entities (customer, merchant), one pipelined write: one round trip.
    assert len(sent) == 1
    features = response.json()["features"]
    assert {f["status"] for n, f in features.items() if n not in {"amount", "card_present"}} == {
        "fresh"
    }
    assert features["amount"] == {
        "value": 120.5,
        "status": "request",
        "source": "request",
        "event_time": None,
        "ingested_at": None,
        "staleness_ms": None,
        "max_staleness_ms": None,
        "lineage_id": None,
        "schema_version": None,
        "effective_time": None,
        "requested_max_staleness_ms": None,
    }


async def test_staleness_is_measured_from_event_time(client: Client) -> None:
    pushed = await seed(client, "c-2", "m-2", timedelta(seconds=30))
    response = await client.post("/score", json=body("c-2", "m-2"))
    assert response.status_code == 200
    answer = response.json()
    txn = answer["features"]["txn_count_30m"]
    assert txn["status"] == "fresh"
    assert txn["source"] == "online_store"
    assert 30_000 <= txn["staleness_ms"] < 40_000
    assert txn["max_staleness_ms"] == 60_000
    assert txn["lineage_id"] == pushed["lineage_id"]
    assert txn["value"] == 2
    assert answer["degraded"] is False
    assert answer["model"] == {"name": "fraud", "version": "3"}
    assert 0.0 < answer["outputs"]["probability"] < 1.0
    assert answer["decision"] in {"approve", "review", "decline"}


async def _stored(redis_client: aioredis.Redis, key: str, field: str) -> StoredValue | None:
    for _ in range(50):
        raw = await redis_client.hget(key, field)
        if raw is not None:
            return msgspec.msgpack.decode(raw, type=StoredValue)
        await asyncio.sleep(0.02)
    return None


async def test_stale_feature_is_fetched_from_its_source_and_written_back(
    client: Client, servers: SampleServers, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    # An hour old: beyond txn_count_30m's 60 s SLA, within account_age_days' day.
    await seed(client, "c-3", "m-3", timedelta(hours=1))
    response = await client.post("/score", json=body("c-3", "m-3"))
    assert response.status_code == 200, response.text
    features = response.json()["features"]
    assert (await servers.source_calls()).get("txn_stats") == 1
    upstream = await servers.source_record("/txn/customers/c-3/txn-stats")
    txn = features["txn_count_30m"]
    assert txn["status"] == "fallback"
    assert txn["source"] == "source:txn_stats"
    assert txn["value"] == upstream["txn_count_30m"]
    assert txn["staleness_ms"] <= 60_000
    assert features["account_age_days"]["status"] == "fresh"
    stored = await _stored(redis_client, f"{redis_prefix}:customer:c-3", "txn_count_30m")
    assert stored is not None
    assert stored.kind == "fallback"
    assert stored.value == upstream["txn_count_30m"]
    assert stored.lineage_id == txn["lineage_id"]


async def test_missing_features_are_fetched_and_then_served_fresh(
    client: Client, servers: SampleServers
) -> None:
    first = await client.post("/score", json=body("c-404", "m-404"))
    assert first.status_code == 200, first.text
    statuses = {n: f["status"] for n, f in first.json()["features"].items()}
    assert statuses["kyc_level"] == "fallback"
    assert statuses["chargeback_rate_90d"] == "fallback"
    # One call per source record: three sources, three calls.
    assert await servers.source_calls() == {
        "customer_profile": 1,
        "txn_stats": 1,
        "merchant_risk": 1,
    }
    for _ in range(50):
        second = await client.post("/score", json=body("c-404", "m-404"))
        if second.json()["features"]["kyc_level"]["status"] == "fresh":
            break
        await asyncio.sleep(0.02)
    assert second.json()["features"]["kyc_level"]["status"] == "fresh"
    assert (
        second.json()["features"]["kyc_level"]["lineage_id"]
        == (first.json()["features"]["kyc_level"]["lineage_id"])
    )


async def test_source_down_applies_each_features_policy(
    client: Client, servers: SampleServers
) -> None:
    # Two hours old: txn_stats features are all stale; the profile is fresh.
    await seed(client, "c-5", "m-5", timedelta(hours=2))
    await servers.fault_source("txn_stats", "error")
    response = await client.post("/score", json=body("c-5", "m-5"))
    assert response.status_code == 200, response.text
    answer = response.json()
    features = answer["features"]
    assert features["txn_count_30m"]["status"] == "stale"  # serve_stale
    assert features["txn_count_30m"]["value"] == 2
    assert features["txn_amount_sum_24h"]["status"] == "stale"
    # SLA one hour, policy "default": the declared default, not the old value.
    assert features["distinct_merchants_7d"]["status"] == "default"
    assert features["distinct_merchants_7d"]["value"] == 1
    assert features["account_age_days"]["status"] == "fresh"
    assert answer["degraded"] is True


async def test_policy_default_and_fail(
    client: Client, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    await servers.fault_source("customer_profile", "error")
    await servers.fault_source("txn_stats", "error")
    # Nothing stored for c-6: txn features have defaults; kyc_level must not be guessed.
    response = await client.post("/score", json=body("c-6", "m-6"))
    assert response.status_code == 503
    error = response.json()
    assert error["field"] == "features.kyc_level"
    assert "kyc_level" in error["detail"]
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 0
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 0

    await servers.fault_source("customer_profile", "ok")
    response = await client.post("/score", json=body("c-6", "m-6"))
    assert response.status_code == 200, response.text
    features = response.json()["features"]
    assert features["txn_count_30m"]["status"] == "default"
    assert features["txn_count_30m"]["value"] == 0
    assert features["distinct_merchants_7d"] == {
        "value": 1,
        "status": "default",
        "source": "default",
        "event_time": None,
        "ingested_at": None,
        "staleness_ms": None,
        "max_staleness_ms": 3_600_000,
        "lineage_id": None,
        "schema_version": 1,
        "effective_time": None,
        "requested_max_staleness_ms": None,
    }
    assert features["kyc_level"]["status"] == "fallback"
    assert response.json()["degraded"] is True


async def test_breaker_opens_after_threshold_and_stops_calling_the_source(
    client: Client, servers: SampleServers
) -> None:
    await servers.fault_source("customer_profile", "error")
    statuses = []
    for i in range(6):
        response = await client.post("/score", json=body(f"c-b{i}", "m-1"))
        statuses.append(response.status_code)
    assert set(statuses) == {503}
    calls = (await servers.source_calls())["customer_profile"]
    # fail_max = 5 consecutive failures, two attempts per request.
    assert calls == 5
    ready = (await client.get("/health/ready")).json()
    assert ready["breakers"]["source:customer_profile"] == "open"
    response = await client.post("/score", json=body("c-b9", "m-1"))
    assert response.status_code == 503
    assert "open" in response.json()["detail"]
    assert (await servers.source_calls())["customer_profile"] == calls


async def test_older_push_never_overwrites_newer(
    client: Client, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    now = datetime.now(UTC)
    newer = await push(client, {"customer_id": "c-7"}, {"txn_count_30m": 5}, now, "cdc:2")
    older = await push(
        client, {"customer_id": "c-7"}, {"txn_count_30m": 3}, now - timedelta(seconds=10), "cdc:1"
    )
    assert newer["written"] == ["txn_count_30m"]
    assert older["written"] == []
    assert older["skipped_older"] == ["txn_count_30m"]
    assert older["lineage_id"] != newer["lineage_id"]
    stored = await _stored(redis_client, f"{redis_prefix}:customer:c-7", "txn_count_30m")
    assert stored is not None
    assert (stored.value, stored.lineage_id) == (5, newer["lineage_id"])
    latest = await push(
        client, {"customer_id": "c-7"}, {"txn_count_30m": 9}, now + timedelta(seconds=1), "cdc:3"
    )
    assert latest["written"] == ["txn_count_30m"]
    stored = await _stored(redis_client, f"{redis_prefix}:customer:c-7", "txn_count_30m")
    assert stored is not None
    assert stored.value == 9


async def test_concurrent_pushes_keep_the_newest(
    client: Client, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    base = datetime.now(UTC) - timedelta(minutes=1)
    times = [base + timedelta(milliseconds=i) for i in range(40)]
    await asyncio.gather(
        *(
            push(client, {"customer_id": "c-8"}, {"txn_count_30m": i}, when, f"cdc:{i}")
            for i, when in reversed(list(enumerate(times)))
        )
    )
    stored = await _stored(redis_client, f"{redis_prefix}:customer:c-8", "txn_count_30m")
    assert stored is not None
    assert stored.value == 39


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"features": {"no_such_feature": 1}}, "features.no_such_feature"),
        ({"features": {"txn_count_30m": "many"}}, "features.txn_count_30m"),
        ({"features": {"txn_count_30m": 1.5}}, "features.txn_count_30m"),
        ({"features": {"chargeback_rate_90d": 0.1}}, "features.chargeback_rate_90d"),
        ({"entities": {"shop_id": "s-1"}}, "entities.shop_id"),
        ({"entities": {}}, "entities"),
        ({"event_time": "yesterday"}, "event_time"),
        ({"event_time": "2026-01-01T00:00:00"}, "event_time"),
        ({"lineage": {"source_system": "x"}}, "lineage.source_ref"),
        ({"lineage": {"source_system": "cdc", "source_ref": "r\x001"}}, "lineage.source_ref"),
        (
            {"lineage": {"source_system": "cdc", "source_ref": "r:1", "transform": "a\nb"}},
            "lineage.transform",
        ),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_push_names_the_field_and_writes_nothing(
    client: Client,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    payload: dict[str, Any],
    field: str,
) -> None:
    good = {
        "entities": {"customer_id": "c-9"},
        # A valid feature first: a bad one later must not leave it half-written.
        "features": {"txn_count_30m": 1, **payload.pop("features", {})},
        "event_time": datetime.now(UTC).isoformat(),
        "lineage": {"source_system": "cdc", "source_ref": "r:1"},
    }
    response = await client.post("/features/push", json={**good, **payload})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert await redis_client.exists(f"{redis_prefix}:customer:c-9") == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "nope"}, "model"),
        ({"entities": {"customer_id": "c-1"}}, "entities.merchant_id"),
        ({"entities": {"customer_id": "c-1", "merchant_id": "m-1", "x_id": "1"}}, "entities.x_id"),
        ({"context": {"amount": "lots", "card_present": False}}, "context.amount"),
        ({"context": {"amount": 1.0}}, "context.card_present"),
        ({"context": {"amount": 1.0, "card_present": 1}}, "context.card_present"),
        ({"context": {"amount": 1.0, "card_present": True, "tip": 2}}, "context.tip"),
        ({"model": 7}, "model"),
        ({"request_id": ""}, "request_id"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_bad_score_request_is_400_naming_the_field(
    client: Client, pg: asyncpg.Connection, change: dict[str, Any], field: str
) -> None:
    response = await client.post("/score", json={**body(), **change})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 0


async def test_request_timeout_header_must_be_positive(client: Client) -> None:
    response = await client.post("/score", json=body(), headers={"X-Request-Timeout-Ms": "0"})
    assert response.status_code == 400


async def test_model_down_is_503_and_leaves_no_record(
    client: Client, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-10", "m-10", timedelta(seconds=1))
    await servers.fault_model("error")
    response = await client.post("/score", json=body("c-10", "m-10"))
    assert response.status_code == 503
    assert response.json()["field"] == "model"
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 0


async def test_model_hang_is_504_within_the_deadline(
    client: Client, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-11", "m-11", timedelta(seconds=1))
    await servers.fault_model("hang")
    response = await client.post(
        "/score", json=body("c-11", "m-11"), headers={"X-Request-Timeout-Ms": "250"}
    )
    assert response.status_code == 504
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 0


async def test_audit_and_outbox_rows_exist_exactly_for_200s(
    settings: GatewaySettings, tmp_path: Path, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    # Twelve at once on a loaded machine may outlast the sample deadline: give them time,
    # so that the only answers other than 200 are the ones this test provokes.
    patient = registry_variant(settings, tmp_path / "patient.toml", *roomy())
    async with serve(create_app(patient)) as client:
        await seed(client, "c-12", "m-12", timedelta(seconds=1))
        requests = [body("c-12", "m-12") for _ in range(12)]
        requests += [{**body(), "model": "nope"}, {**body(), "context": {}}]
        responses = await asyncio.gather(*(client.post("/score", json=r) for r in requests))
        await servers.fault_model("error")
        responses.append(await client.post("/score", json=body("c-12", "m-12")))
    ok = [r.json()["decision_id"] for r in responses if r.status_code == 200]
    assert len(ok) == 12
    assert sorted(r.status_code for r in responses if r.status_code != 200) == [400, 400, 503]
    rows = await pg.fetch("SELECT decision_id::text FROM decisions")
    assert sorted(r["decision_id"] for r in rows) == sorted(ok)
    events = await pg.fetch("SELECT decision_id::text, event_type FROM outbox")
    assert sorted(e["decision_id"] for e in events) == sorted(ok)
    assert {e["event_type"] for e in events} == {"scoregate.decision.made"}


async def test_same_request_id_from_same_caller_returns_the_first_decision(
    client: Client, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-13", "m-13", timedelta(seconds=1))
    request = body("c-13", "m-13", request_id="order-77")
    first = await client.post("/score", json=request, headers=bearer("scorer"))
    again = await asyncio.gather(
        *(client.post("/score", json=request, headers=bearer("scorer")) for _ in range(5))
    )
    other = await client.post("/score", json=request, headers=bearer("scorer2"))
    assert first.status_code == 200
    assert {r.json()["decision_id"] for r in again} == {first.json()["decision_id"]}
    assert again[0].json() == first.json()
    assert first.json()["request_id"] == "order-77"
    assert other.json()["decision_id"] != first.json()["decision_id"]
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 2
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 2


async def test_concurrent_duplicates_race_to_one_record(
    client: Client, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-14", "m-14", timedelta(seconds=1))
    request = body("c-14", "m-14", request_id="race-1")
    answers = await asyncio.gather(*(client.post("/score", json=request) for _ in range(8)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["decision_id"] for a in answers}) == 1
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 1
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 1


async def test_decision_record_holds_the_whole_context(client: Client) -> None:
    pushed = await seed(client, "c-15", "m-15", timedelta(seconds=3))
    answer = (await client.post("/score", json=body("c-15", "m-15"))).json()
    record = (await client.get(f"/decisions/{answer['decision_id']}")).json()
    for key in (
        "decision_id",
        "request_id",
        "model",
        "outputs",
        "decision",
        "degraded",
        "features",
    ):
        assert record[key] == answer[key], key
    assert record["subject"] == {"entity": "customer", "key": "customer_id", "id": "c-15"}
    assert record["request"]["context"] == {"amount": 120.5, "card_present": False}
    lineage = record["lineage"]["kyc_level"]
    assert lineage["lineage_id"] == pushed["lineage_id"]
    assert lineage["source_system"] == "orders-cdc"
    assert lineage["source_ref"] == "orders-cdc:42"
    assert lineage["transform"] == "agg_v1"
    assert lineage["schema_version"] == 2
    assert lineage["entity_id"] == "c-15"
    assert record["received_at"] <= record["decided_at"]
    assert record["committed_at"] is not None
    assert set(record["timings"]) == {"online_store_ms", "sources_ms", "model_ms", "total_ms"}
    assert record["status"] == "made"
    assert record["rollback"] is None
    assert record["decision_rule"].startswith("probability>=")
    assert len(record["writeback"]) == 1
    assert record["writeback"][0]["type"] == "scoregate.decision.made"
    assert record["writeback"][0]["status"] in {"pending", "delivered"}


async def test_unknown_decision_is_404(client: Client) -> None:
    for decision_id in ("0190aaaa-0000-7000-8000-000000000000", "not-a-uuid"):
        response = await client.get(f"/decisions/{decision_id}")
        assert response.status_code == 404
        response = await client.post(f"/decisions/{decision_id}/rollback", json={"reason": "x"})
        assert response.status_code == 404


async def test_rollback_twice_answers_with_the_first(
    client: Client, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-16", "m-16", timedelta(seconds=1))
    decision_id = (await client.post("/score", json=body("c-16", "m-16"))).json()["decision_id"]
    first = await client.post(
        f"/decisions/{decision_id}/rollback",
        json={"reason": "chargeback disputed"},
        headers=bearer("operator"),
    )
    second = await client.post(
        f"/decisions/{decision_id}/rollback", json={"reason": "again"}, headers=bearer("admin")
    )
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert first.json()["reason"] == "chargeback disputed"
    assert first.json()["rolled_back_by"] == key_from_secret(KEYS["operator"], []).key_id
    record = (await client.get(f"/decisions/{decision_id}")).json()
    assert record["status"] == "rolled_back"
    assert record["rollback"] == first.json()
    types = await pg.fetch("SELECT event_type FROM outbox ORDER BY seq")
    assert [t["event_type"] for t in types] == [
        "scoregate.decision.made",
        "scoregate.decision.rolled_back",
    ]
    bad = await client.post(f"/decisions/{decision_id}/rollback", json={"reason": ""})
    assert bad.status_code == 400
    assert bad.json()["field"] == "reason"


async def test_registry_is_served(client: Client) -> None:
    registry = (await client.get("/registry")).json()
    assert {"name": "customer", "key": "customer_id"}.items() <= registry["entities"][0].items()
    source = registry["sources"][0]
    assert {"name", "url", "owner", "timeout_ms"} <= source.keys()
    feature = registry["features"][0]
    assert {
        "name",
        "entity",
        "dtype",
        "max_staleness_ms",
        "source",
        "on_unavailable",
        "default",
        "classification",
        "owner",
    } <= feature.keys()
    model = registry["models"][0]
    assert {"name", "version", "subject", "features", "context", "endpoint"} <= model.keys()
    assert {"name": "amount", "dtype": "float64"}.items() <= model["context"][0].items()


async def test_health(client: Client, servers: SampleServers) -> None:
    assert (await client.get("/health/live")).status_code == 200
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    checks = response.json()["checks"]
    assert set(checks) == {"postgres", "redis", "kafka", "model:fraud"}
    assert all(c["ok"] for c in checks.values())
    await servers.fault_model("error")
    response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["model:fraud"]["ok"] is False


async def test_openapi_schema_is_served(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert {"/score", "/features/push", "/decisions/{decision_id}", "/registry"} <= set(
        schema["paths"]
    )
