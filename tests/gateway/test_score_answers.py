"""What ``/score`` sends: the answer's JSON, encoded once, masked for callers without pii."""

from __future__ import annotations

from datetime import timedelta

import httpx
import msgspec
import pytest

from contracts.scoring import ScoreResponse
from tests.support.keys import bearer
from tests.support.scoring import body, seed

pytestmark = pytest.mark.services

Client = httpx.AsyncClient


async def test_a_caller_with_pii_gets_the_kept_json_and_its_retry_the_same_bytes(
    client: Client,
) -> None:
    await seed(client, "c-a1", "m-a1", timedelta(seconds=1))
    request = body("c-a1", "m-a1", request_id="ans-1")

    first = await client.post("/score", json=request, headers=bearer("admin"))
    again = await client.post("/score", json=request, headers=bearer("admin"))

    assert first.status_code == again.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert again.content == first.content
    # The body is a ScoreResponse's own encoding, unmasked.
    answer = msgspec.json.decode(first.content, type=ScoreResponse)
    assert msgspec.json.encode(answer) == first.content
    assert answer.features["account_age_days"].value == 700


async def test_a_caller_without_pii_gets_it_masked_first_and_from_memory_alike(
    client: Client,
) -> None:
    await seed(client, "c-a2", "m-a2", timedelta(seconds=1))
    request = body("c-a2", "m-a2", request_id="ans-2")

    first = await client.post("/score", json=request, headers=bearer("scorer"))
    again = await client.post("/score", json=request, headers=bearer("scorer"))
    plain = await client.post("/score", json=body("c-a2", "m-a2"), headers=bearer("scorer"))

    assert first.status_code == again.status_code == plain.status_code == 200
    assert again.content == first.content
    for sent in (first, plain):
        assert sent.headers["content-type"] == "application/json"
        features = sent.json()["features"]
        assert str(features["account_age_days"]["value"]).startswith("***")
        assert features["kyc_level"]["value"] == 3
