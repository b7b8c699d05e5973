"""The online store's connection pool under bursts: a request waits for a Redis
connection within its deadline, and that wait is never counted as a Redis failure.

What is tested is the online store and the admission cap, not the sample model server's
capacity, so the registry makes the model patient: a minute for its deadline and its
own timeout (one process answering hundreds of separate calls on a loaded machine may
take longer than 300 ms), retries and a breaker that a few dropped keep-alive
connections cannot open.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar import Litestar

from gateway.app import create_app
from gateway.plugin import GatewayPlugin
from gateway.settings import GatewaySettings
from tests.support.gateway import serve
from tests.support.keys import bearer
from tests.support.scoring import body, seed

pytestmark = pytest.mark.services


@pytest.fixture
def roomy_settings(settings: GatewaySettings, tmp_path: Path) -> GatewaySettings:
    """The test settings with a patient model (see the module's docstring)."""
    text = settings.registry_path.read_text()
    model = "timeout_ms = 300\n"
    assert text.count(model) == 1
    patient = (
        "timeout_ms = 60000\ndeadline_ms = 60000\n"
        "retry = { attempts = 5, backoff_ms = 10, max_backoff_ms = 50 }\n"
        "breaker = { fail_max = 1000 }\n"
    )
    # The store's own timeout is long too: a burst that saturates the loop delays
    # every reply, and only failures of Redis itself (or of its pool) may count here.
    assert "[online_store]" not in text
    store = "\n[online_store]\ntimeout_ms = 30000\n"
    path = tmp_path / "roomy.toml"
    path.write_text(text.replace(model, patient) + store)
    return msgspec.structs.replace(settings, registry_path=path)


@pytest.fixture
async def app(roomy_settings: GatewaySettings) -> AsyncIterator[Litestar]:
    yield create_app(roomy_settings)


async def burst(base_url: httpx.URL, size: int) -> collections.Counter[str]:
    """``size`` concurrent ``/score`` requests for one customer whose features are fresh.

    Returns:
        How many got each outcome: ``fresh`` (200, every stored feature from the online
        store), ``200`` (some from their sources), ``admission`` (the cap's 503 with
        ``Retry-After``), or what else came back.
    """
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    outcomes: collections.Counter[str] = collections.Counter()
    async with httpx.AsyncClient(
        base_url=base_url, timeout=120, limits=limits, headers=bearer("scorer")
    ) as scorer:

        async def one() -> None:
            response = await scorer.post("/score", json=body("c-hot", "m-hot"))
            answer = response.json()
            if response.status_code == 200:
                stored = {
                    f["source"] for f in answer["features"].values() if f["source"] != "request"
                }
                outcomes["fresh" if stored == {"online_store"} else "200"] += 1
            elif response.status_code == 503 and str(answer["detail"]).startswith("overloaded"):
                assert response.headers["retry-after"] == "1"
                outcomes["admission"] += 1
            else:
                outcomes[f"{response.status_code} {answer.get('detail')}"] += 1

        await asyncio.gather(*(one() for _ in range(size)))
    return outcomes


async def test_a_burst_as_large_as_the_admission_cap_is_served_from_the_online_store(
    app: Litestar, roomy_settings: GatewaySettings
) -> None:
    async with serve(app) as client:
        await seed(client, "c-hot", "m-hot", timedelta(seconds=5))
        outcomes = await burst(client.base_url, roomy_settings.max_in_flight)
        store = app.plugins.get(GatewayPlugin).store
        assert set(outcomes) <= {"fresh", "200", "admission"}, outcomes
        assert outcomes["fresh"] > 0
        # Before the pool waited, "too many connections" opened it and the burst went
        # to the sources.
        assert store.breaker.state == "closed"


async def test_requests_wait_for_a_connection_of_a_small_pool(
    roomy_settings: GatewaySettings,
) -> None:
    # One connection for the whole burst: every read but one waits for it.
    app = create_app(msgspec.structs.replace(roomy_settings, redis_max_connections=1))
    async with serve(app) as client:
        await seed(client, "c-hot", "m-hot", timedelta(seconds=5))
        outcomes = await burst(client.base_url, 50)
        store = app.plugins.get(GatewayPlugin).store
        assert set(outcomes) <= {"fresh", "200"}, outcomes
        assert outcomes["fresh"] > 0
        assert store.breaker.state == "closed"
