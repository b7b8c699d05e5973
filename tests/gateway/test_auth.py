"""API keys: 401 without a key, 403 without the role, masking of PII without the scope."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import httpx
import msgspec
import pytest

from contracts.events import DecisionMade, OutcomeEvent
from gateway.auth import KeyConfigError, KeyRing, key_from_secret, new_key, parse_keys
from tests.support.keys import KEYS, bearer
from tests.support.scoring import body, seed

Client = httpx.AsyncClient

DECISION = "01a20000-0000-7000-8000-000000000000"
ROUTES = [
    ("POST", "/score", "scorer"),
    ("POST", "/features/push", "feature_writer"),
    ("GET", f"/decisions/{DECISION}", "auditor"),
    ("GET", "/decisions", "auditor"),
    ("GET", f"/decisions/{DECISION}/access-log", "auditor"),
    ("GET", "/audit/verify", "auditor"),
    ("POST", f"/decisions/{DECISION}/rollback", "operator"),
    ("POST", f"/decisions/{DECISION}/replay", "operator"),
    ("GET", "/dlq", "operator"),
    ("POST", "/dlq/0b7c5f3e-0000-4000-8000-000000000000/redrive", "operator"),
]
PAYLOADS = {
    "/score": body(),
    "/features/push": {
        "entities": {"customer_id": "c-auth"},
        "features": {"txn_count_30m": 1},
        "event_time": "2026-11-22T00:00:00Z",
        "lineage": {"source_system": "cdc", "source_ref": "r:1"},
    },
}


def test_key_entries_parse_and_name_the_bad_entry() -> None:
    _, key = new_key("auditor", ["pii"])
    assert parse_keys(f"# keys\n{key.line()}\n") == [key]
    with pytest.raises(KeyConfigError, match="entry 2"):
        parse_keys(f"{key.line()},kx:abc:scorer")
    with pytest.raises(KeyConfigError, match="roles"):
        parse_keys(f"kx:{'0' * 64}:root")
    with pytest.raises(KeyConfigError, match="scopes"):
        parse_keys(f"kx:{'0' * 64}:auditor:everything")


def test_keyring_knows_only_configured_keys() -> None:
    secret, key = new_key("operator")
    ring = KeyRing([key, key_from_secret("other", ["scorer"])])
    principal = ring.authenticate(secret)
    assert principal is not None
    assert principal.key_id == key.key_id
    assert principal.has("operator")
    assert not principal.has("auditor")
    assert not principal.sees_pii
    assert ring.authenticate(secret + "x") is None
    assert ring.authenticate("") is None
    assert secret not in key.line()


@pytest.mark.services
@pytest.mark.parametrize(("method", "path", "role"), ROUTES)
async def test_each_route_wants_a_key_and_its_role(
    client: Client, method: str, path: str, role: str
) -> None:
    payload = PAYLOADS.get(path, {"reason": "checking access"} if "rollback" in path else {})
    kwargs = {"json": payload} if method == "POST" else {}
    no_key = await client.request(method, path, headers={"Authorization": ""}, **kwargs)
    assert no_key.status_code == 401
    assert no_key.headers["www-authenticate"] == "Bearer"
    unknown = await client.request(
        method, path, headers={"Authorization": "Bearer sk-nobody"}, **kwargs
    )
    assert unknown.status_code == 401
    for who in ("scorer", "feature_writer", "auditor", "operator", "admin"):
        response = await client.request(method, path, headers=bearer(who), **kwargs)
        if who in {role, "admin"}:
            assert response.status_code not in {401, 403}, (who, response.text)
        else:
            assert response.status_code == 403, (who, response.text)
            assert role in response.json()["detail"]


@pytest.mark.services
async def test_health_and_schema_need_no_key(client: Client) -> None:
    headers = {"Authorization": ""}
    assert (await client.get("/health/live", headers=headers)).status_code == 200
    assert (await client.get("/health/ready", headers=headers)).status_code == 200
    assert (await client.get("/schema/openapi.json", headers=headers)).status_code == 200
    registry = await client.get("/registry", headers=bearer("scorer"))
    assert registry.status_code == 200
    assert (await client.get("/registry", headers=headers)).status_code == 401


@pytest.mark.services
async def test_pii_is_masked_without_the_scope(client: Client, pg: asyncpg.Connection) -> None:
    await seed(client, "c-pii", "m-pii", timedelta(seconds=1))
    first = await client.post("/score", json=body("c-pii", "m-pii"), headers=bearer("scorer"))
    second = await client.post("/score", json=body("c-pii", "m-pii"), headers=bearer("scorer"))
    masked = first.json()["features"]["account_age_days"]["value"]
    assert isinstance(masked, str)
    assert masked.startswith("***")
    assert masked != "***"
    # Keyed hash: the same value masks the same way, so decisions stay comparable.
    assert second.json()["features"]["account_age_days"]["value"] == masked
    assert first.json()["features"]["kyc_level"]["value"] == 3

    decision = first.json()["decision_id"]
    for who, visible in (("auditor", False), ("auditor_pii", True), ("admin", True)):
        record = (await client.get(f"/decisions/{decision}", headers=bearer(who))).json()
        value = record["features"]["account_age_days"]["value"]
        assert (value == 700) is visible, who
        assert (value == masked) is not visible, who

    payload = await pg.fetchval("SELECT payload FROM outbox WHERE decision_id = $1::uuid", decision)
    event = msgspec.json.decode(payload, type=OutcomeEvent)
    assert isinstance(event, DecisionMade)
    assert "account_age_days" not in event.features
    assert event.features["kyc_level"] == 3


def test_test_keys_are_distinct() -> None:
    assert len(set(KEYS.values())) == len(KEYS)
