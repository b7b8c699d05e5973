"""``/score`` with the caller's own ``max_staleness_ms``, against real Redis, PostgreSQL,
the broker, the sample sources and the sample model server.

A value fresh by its SLA but older than the caller's bound is fetched from its source
(or served as its policy says when the source fails); a bound above the SLA changes
nothing. Source calls are counted by the sample source server itself, and what the
record kept is read back through ``GET /decisions/{id}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from contracts.features import FeatureScalar
from contracts.scoring import ModelRef
from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.support.gateway import serve
from tests.support.sample import SampleServers
from tests.support.scoring import body, seed

pytestmark = pytest.mark.services

Client = httpx.AsyncClient

SOURCES = ("customer_profile", "txn_stats", "merchant_risk")
STORED = {
    "txn_count_30m": 60_000,
    "txn_amount_sum_24h": 300_000,
    "distinct_merchants_7d": 3_600_000,
    "account_age_days": 86_400_000,
    "kyc_level": 86_400_000,
    "country_risk": 86_400_000,
    "chargeback_rate_90d": 3_600_000,
}
"""The sample fraud model's stored features and their SLAs."""


async def calls(servers: SampleServers) -> dict[str, int]:
    counted = await servers.source_calls()
    return {source: counted.get(source, 0) for source in SOURCES}


def stored_features(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    features: dict[str, dict[str, Any]] = answer["features"]
    return {name: value for name, value in features.items() if name in STORED}


async def score(client: Client, request: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/score", json=request)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_a_value_fresh_by_its_sla_but_older_than_the_bound_is_fetched(
    client: Client, servers: SampleServers
) -> None:
    # 30 s old: within every SLA (the shortest is txn_count_30m's 60 s).
    await seed(client, "c-b1", "m-b1", timedelta(seconds=30))
    unbounded = stored_features(await score(client, body("c-b1", "m-b1")))
    assert {f["status"] for f in unbounded.values()} == {"fresh"}
    assert await calls(servers) == dict.fromkeys(SOURCES, 0)

    answer = await score(client, body("c-b1", "m-b1", max_staleness_ms=10_000))

    # Every stored feature is older than 10 s: each source is asked once for its record.
    assert await calls(servers) == dict.fromkeys(SOURCES, 1)
    features = stored_features(answer)
    assert {n: (f["status"], f["source"]) for n, f in features.items()} == {
        "txn_count_30m": ("fallback", "source:txn_stats"),
        "txn_amount_sum_24h": ("fallback", "source:txn_stats"),
        "distinct_merchants_7d": ("fallback", "source:txn_stats"),
        "account_age_days": ("fallback", "source:customer_profile"),
        "kyc_level": ("fallback", "source:customer_profile"),
        "country_risk": ("fallback", "source:customer_profile"),
        "chargeback_rate_90d": ("fallback", "source:merchant_risk"),
    }
    upstream = await servers.source_record("/txn/customers/c-b1/txn-stats")
    assert features["txn_count_30m"]["value"] == upstream["txn_count_30m"]
    # The record says both bounds: the SLA and the caller's, the smaller one applied.
    assert {n: f["max_staleness_ms"] for n, f in features.items()} == STORED
    assert {f["requested_max_staleness_ms"] for f in features.values()} == {10_000}
    assert answer["features"]["amount"]["requested_max_staleness_ms"] is None
    assert answer["degraded"] is False

    record = (await client.get(f"/decisions/{answer['decision_id']}")).json()
    assert record["request"]["max_staleness_ms"] == 10_000
    assert record["features"]["txn_count_30m"]["status"] == "fallback"
    assert record["features"]["txn_count_30m"]["max_staleness_ms"] == 60_000
    assert record["features"]["txn_count_30m"]["requested_max_staleness_ms"] == 10_000
    assert record["features"] == answer["features"]


async def test_a_bound_above_the_sla_does_not_loosen_it(
    client: Client, servers: SampleServers
) -> None:
    # Two minutes old: beyond txn_count_30m's 60 s SLA, within every other SLA.
    await seed(client, "c-b2", "m-b2", timedelta(minutes=2))
    two_days = 2 * 86_400_000

    answer = await score(client, body("c-b2", "m-b2", max_staleness_ms=two_days))

    assert await calls(servers) == {"customer_profile": 0, "txn_stats": 1, "merchant_risk": 0}
    features = stored_features(answer)
    assert features["txn_count_30m"]["status"] == "fallback"
    assert features["txn_count_30m"]["max_staleness_ms"] == 60_000
    assert features["txn_count_30m"]["requested_max_staleness_ms"] == two_days
    within_sla = {n: f["status"] for n, f in features.items() if n != "txn_count_30m"}
    assert within_sla == dict.fromkeys(within_sla, "fresh")
    assert len(within_sla) == len(STORED) - 1


async def test_a_bound_per_feature_applies_to_the_features_it_names_only(
    client: Client, servers: SampleServers
) -> None:
    await seed(client, "c-b3", "m-b3", timedelta(seconds=30))

    answer = await score(client, body("c-b3", "m-b3", max_staleness_ms={"kyc_level": 5_000}))

    assert await calls(servers) == {"customer_profile": 1, "txn_stats": 0, "merchant_risk": 0}
    features = stored_features(answer)
    assert features["kyc_level"]["status"] == "fallback"
    assert features["kyc_level"]["source"] == "source:customer_profile"
    assert features["kyc_level"]["requested_max_staleness_ms"] == 5_000
    others = {n: f for n, f in features.items() if n != "kyc_level"}
    # account_age_days comes from the same source record, but it was not bounded.
    assert {(f["status"], f["source"]) for f in others.values()} == {("fresh", "online_store")}
    assert {f["requested_max_staleness_ms"] for f in others.values()} == {None}

    record = (await client.get(f"/decisions/{answer['decision_id']}")).json()
    assert record["request"]["max_staleness_ms"] == {"kyc_level": 5_000}


async def test_a_bounded_value_whose_source_fails_is_served_as_its_policy_says(
    client: Client, servers: SampleServers, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-b4", "m-b4", timedelta(seconds=30))
    await servers.fault_source("txn_stats", "error")
    bounds = {"txn_count_30m": 10_000, "distinct_merchants_7d": 10_000}

    answer = await score(client, body("c-b4", "m-b4", max_staleness_ms=bounds))

    features = stored_features(answer)
    # serve_stale: the stored value, as stale for this request.
    assert (features["txn_count_30m"]["status"], features["txn_count_30m"]["value"]) == (
        "stale",
        2,
    )
    assert features["txn_count_30m"]["requested_max_staleness_ms"] == 10_000
    # default: the declared default, and the bound it was refused by.
    assert features["distinct_merchants_7d"]["status"] == "default"
    assert features["distinct_merchants_7d"]["value"] == 1
    assert features["distinct_merchants_7d"]["requested_max_staleness_ms"] == 10_000
    # Same source, not bounded: fresh from the store.
    assert features["txn_amount_sum_24h"]["status"] == "fresh"
    assert answer["degraded"] is True
    record = (await client.get(f"/decisions/{answer['decision_id']}")).json()
    assert set(record["problems"]) == {"txn_count_30m", "distinct_merchants_7d"}

    # fail: kyc_level is fresh by its SLA, but not by the bound, and has no source now.
    await servers.fault_source("customer_profile", "error")
    refused = await client.post(
        "/score", json=body("c-b4", "m-b4", max_staleness_ms={"kyc_level": 1_000})
    )
    assert refused.status_code == 503, refused.text
    assert refused.json()["field"] == "features.kyc_level"
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 1


@pytest.mark.parametrize(
    ("bound", "field"),
    [
        ({"no_such_feature": 1_000}, "max_staleness_ms.no_such_feature"),
        ({"kyc_level": 1_000, "amount": 1_000}, "max_staleness_ms.amount"),
        (-1, "max_staleness_ms"),
        ({"kyc_level": -5}, "max_staleness_ms.kyc_level"),
        ({"kyc_level": 1.5}, "max_staleness_ms.kyc_level"),
        ("soon", "max_staleness_ms"),
        (True, "max_staleness_ms"),
        ({f"f{n}": 1 for n in range(257)}, "max_staleness_ms"),
    ],
)
async def test_a_bound_the_model_cannot_take_is_400_naming_it_and_nothing_is_written(
    client: Client, servers: SampleServers, pg: asyncpg.Connection, bound: object, field: str
) -> None:
    await seed(client, "c-b5", "m-b5", timedelta(seconds=30))

    response = await client.post("/score", json=body("c-b5", "m-b5", max_staleness_ms=bound))

    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 0
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 0
    assert await calls(servers) == dict.fromkeys(SOURCES, 0)


class _OldFeatureValue(msgspec.Struct, kw_only=True):
    """FeatureValue as it was before the caller's bound was recorded."""

    value: FeatureScalar | None
    status: str
    source: str
    event_time: datetime | None = None
    ingested_at: datetime | None = None
    staleness_ms: int | None = None
    max_staleness_ms: int | None = None
    lineage_id: str | None = None
    schema_version: int | None = None
    effective_time: datetime | None = None


class _OldScoreResponse(msgspec.Struct, kw_only=True):
    decision_id: str
    request_id: str
    model: ModelRef
    outputs: dict[str, Any]
    decision: str | None
    degraded: bool
    features: dict[str, _OldFeatureValue]


async def test_without_a_bound_the_answer_is_as_before_but_for_the_new_null_field(
    client: Client, servers: SampleServers
) -> None:
    await seed(client, "c-b6", "m-b6", timedelta(seconds=30))

    response = await client.post("/score", json=body("c-b6", "m-b6"))
    assert response.status_code == 200, response.text

    assert await calls(servers) == dict.fromkeys(SOURCES, 0)
    answer = response.json()
    assert {f["status"] for f in stored_features(answer).values()} == {"fresh"}
    assert {f["requested_max_staleness_ms"] for f in answer["features"].values()} == {None}
    # The field comes last in every feature: without it the bytes are what the
    # contract before it encoded.
    new_field = b',"requested_max_staleness_ms":null}'
    assert response.content.count(new_field) == len(answer["features"])
    before = msgspec.json.encode(msgspec.json.decode(response.content, type=_OldScoreResponse))
    assert response.content.replace(new_field, b"}") == before
    record = (await client.get(f"/decisions/{answer['decision_id']}")).json()
    assert record["request"]["max_staleness_ms"] is None

    # An empty object bounds nothing: the same answer, still without a source call.
    empty = await score(client, body("c-b6", "m-b6", max_staleness_ms={}))
    assert {f["status"] for f in stored_features(empty).values()} == {"fresh"}
    assert {f["requested_max_staleness_ms"] for f in empty["features"].values()} == {None}
    assert await calls(servers) == dict.fromkeys(SOURCES, 0)


@pytest.fixture
async def second_gateway(settings: GatewaySettings) -> AsyncIterator[Client]:
    """Another gateway process's view: its own app on the same database."""
    async with serve(create_app(settings)) as http:
        yield http


async def test_a_request_id_reused_with_another_bound_is_409_naming_it(
    client: Client, second_gateway: Client, pg: asyncpg.Connection
) -> None:
    await seed(client, "c-b7", "m-b7", timedelta(seconds=30))
    first = body("c-b7", "m-b7", request_id="bound-1", max_staleness_ms={"kyc_level": 5_000})
    answer = await score(client, first)

    # The same body is the same request, from this gateway's memory or the other's
    # commit (which compares the fingerprint PostgreSQL kept).
    for gateway in (client, second_gateway):
        assert await score(gateway, first) == answer
        for bound, differs in [
            ({"kyc_level": 6_000}, ["max_staleness_ms.kyc_level"]),
            ({"kyc_level": 5_000, "country_risk": 5_000}, ["max_staleness_ms.country_risk"]),
            (5_000, ["max_staleness_ms"]),
            (None, ["max_staleness_ms"]),
        ]:
            refused = await gateway.post("/score", json={**first, "max_staleness_ms": bound})
            assert refused.status_code == 409, refused.text
            assert refused.json()["field"] == differs[0]
            assert refused.json()["extra"] == {"request_id": "bound-1", "differs": differs}

    # A key first used without a bound refuses one.
    plain = body("c-b7", "m-b7", request_id="bound-2")
    await score(client, plain)
    refused = await second_gateway.post("/score", json={**plain, "max_staleness_ms": 0})
    assert refused.status_code == 409, refused.text
    assert refused.json()["field"] == "max_staleness_ms"
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 2


async def test_the_served_schema_declares_the_bound_as_a_number_or_an_object(
    client: Client,
) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    components = schema["components"]["schemas"]
    bound = components["ScoreRequest"]["properties"]["max_staleness_ms"]
    assert [arm["type"] for arm in bound["oneOf"]] == ["integer", "object", "null"]
    assert bound["oneOf"][1]["additionalProperties"]["type"] == "integer"
    assert "max_staleness_ms" not in components["ScoreRequest"]["required"]
    served = components["FeatureValue"]["properties"]["requested_max_staleness_ms"]
    assert [arm["type"] for arm in served["oneOf"]] == ["integer", "null"]
