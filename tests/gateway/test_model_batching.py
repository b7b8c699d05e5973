"""Batched model calls against the sample model server over real TCP.

The server runs in the test's event loop (uvicorn, the sample model's own ASGI app and
fraud model), so the test can hold a call in flight until the rows it wants are
waiting, and script a call's answer; what the server saw is read from it directly.
The last test scores through a whole gateway with PostgreSQL, Redis and the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import uvicorn
from litestar.types import Receive

from contracts.inference import InferRequest
from contracts.registry import BreakerPolicy, DType, Model, ModelInput, RetryPolicy
from gateway.app import create_app
from gateway.deadline import Deadline
from gateway.errors import DeadlineExceeded, Unavailable
from gateway.model_client import ModelClient, ModelRejected
from gateway.plugin import GatewayPlugin
from gateway.settings import GatewaySettings
from scoregate_dev.broker import free_port
from scoregate_dev.sample_model import FEATURES, FraudModel, create_model_app
from tests.support.gateway import registry_variant, roomy, serve
from tests.support.sample import SampleServers
from tests.support.scoring import body, seed

LIMIT_S = 60.0
DTYPES: dict[str, DType] = {
    "txn_count_30m": "int64",
    "txn_amount_sum_24h": "float64",
    "distinct_merchants_7d": "int64",
    "account_age_days": "int64",
    "kyc_level": "int64",
    "country_risk": "float64",
    "chargeback_rate_90d": "float64",
    "amount": "float64",
    "card_present": "bool",
}
VECTOR = [(name, DTYPES[name]) for name in FEATURES]


def row(n: int) -> list[Any]:
    """A distinct, plausible row of the fraud model's inputs."""
    return [n % 7, 100.0 + 37.5 * n, n % 11, 30 + 90 * n, 1 + n % 3, 0.05 * (n % 9), 0.001 * n]


def vector(n: int) -> list[Any]:
    return [*row(n), 20.0 + 150.0 * n, n % 2 == 0]


class HeldModel:
    """The sample model server; calls by index can be held until released, or answered
    with a given status instead of being scored."""

    def __init__(self, model: FraudModel) -> None:
        self.app = create_model_app(model)
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.calls: list[int] = []
        """Rows of each inference call, in the order the calls came."""
        self.hold: set[int] = set()
        self.statuses: dict[int, int] = {}
        self._released = asyncio.Event()
        service = self.app.service
        score = service.handle_infer

        async def handle(
            name: str, version: str | None, raw: bytes, receive: Receive
        ) -> tuple[int, bytes]:
            index = len(self.calls)
            request = msgspec.json.decode(raw, type=InferRequest)
            self.calls.append(request.inputs[0].shape[0])
            if index in self.hold:
                await self._released.wait()
            status = self.statuses.get(index)
            if status is not None:
                service.infer_calls += 1
                return status, b'{"error": "scripted"}'
            return await score(name, version, raw, receive)

        service.handle_infer = handle  # type: ignore[method-assign]

    def release(self) -> None:
        self._released.set()

    def expected(self, values: list[Any]) -> float:
        """The model's own score of one row, scored alone."""
        return self.model.predict_flat([float(v) for v in values], 1)[0]


@pytest.fixture(scope="module")
def fraud_model() -> FraudModel:
    return FraudModel.fit_synthetic()


@pytest.fixture
async def held(fraud_model: FraudModel) -> AsyncIterator[HeldModel]:
    server_model = HeldModel(fraud_model)
    server = uvicorn.Server(
        uvicorn.Config(
            server_model.app,
            host="127.0.0.1",
            port=server_model.port,
            log_level="warning",
            lifespan="on",
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    yield server_model
    server_model.release()
    server.should_exit = True
    await task


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


def client_of(
    held: HeldModel,
    session: aiohttp.ClientSession,
    layout: str = "tensor",
    attempts: int = 1,
    fail_max: int = 100,
    max_batch_size: int = 8,
) -> ModelClient:
    model = Model(
        name="fraud",
        version="3",
        subject="customer",
        endpoint=held.url,
        features=list(FEATURES[:-2]),
        input=ModelInput(layout=layout),  # type: ignore[arg-type]
        timeout_ms=60_000,
        retry=RetryPolicy(attempts=attempts, backoff_ms=0, max_backoff_ms=0),
        breaker=BreakerPolicy(fail_max=fail_max),
        max_batch_size=max_batch_size,
    )
    return ModelClient(model, VECTOR, session)


async def until(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(LIMIT_S):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {LIMIT_S} s")


def score(client: ModelClient, n: int, budget_s: float = LIMIT_S) -> asyncio.Task[dict[str, Any]]:
    return asyncio.create_task(client.infer(f"d-{n}", vector(n), Deadline(budget_s)))


def waiting(client: ModelClient, rows: int) -> Callable[[], bool]:
    assert client.batcher is not None
    batcher = client.batcher
    return lambda: batcher.waiting == rows


async def first_call_held(held: HeldModel, client: ModelClient) -> asyncio.Task[dict[str, Any]]:
    """Row 0 in a call the server holds, so the rows after it wait."""
    held.hold.add(0)
    first = score(client, 0)
    await until(lambda: len(held.calls) == 1, "the first call")
    return first


@pytest.mark.parametrize("layout", ["tensor", "columns"])
async def test_rows_that_waited_go_as_one_call_and_get_their_own_outputs_in_order(
    held: HeldModel, session: aiohttp.ClientSession, layout: str
) -> None:
    client = client_of(held, session, layout)
    first = await first_call_held(held, client)
    rows = [score(client, n) for n in range(1, 6)]
    await until(waiting(client, 5), "five rows waiting")
    held.release()
    answers = await asyncio.gather(first, *rows)
    assert held.calls == [1, 5]
    assert held.app.service.rows == 6
    for n, answer in enumerate(answers):
        assert answer["probability"] == pytest.approx(held.expected(vector(n)), rel=1e-12)
        assert answer["label"] == (1 if answer["probability"] >= 0.5 else 0)
    assert len({answer["probability"] for answer in answers}) == 6


async def test_no_call_carries_more_than_max_batch_size_rows(
    held: HeldModel, session: aiohttp.ClientSession
) -> None:
    client = client_of(held, session, max_batch_size=3)
    first = await first_call_held(held, client)
    rows = [score(client, n) for n in range(1, 8)]
    await until(waiting(client, 7), "seven rows waiting")
    held.release()
    answers = await asyncio.gather(first, *rows)
    assert held.calls == [1, 3, 3, 1]
    for n, answer in enumerate(answers):
        assert answer["probability"] == pytest.approx(held.expected(vector(n)), rel=1e-12)


async def test_a_row_whose_deadline_passes_while_it_waits_is_504_and_never_sent(
    held: HeldModel, session: aiohttp.ClientSession
) -> None:
    client = client_of(held, session)
    first = await first_call_held(held, client)
    hurried = score(client, 1, budget_s=0.05)
    patient = score(client, 2)
    with pytest.raises(DeadlineExceeded) as caught:
        await hurried
    assert caught.value.status_code == 504
    assert caught.value.field == "model"
    held.release()
    answers = await asyncio.gather(first, patient)
    assert held.calls == [1, 1]
    assert held.app.service.rows == 2
    assert answers[1]["probability"] == pytest.approx(held.expected(vector(2)), rel=1e-12)


@pytest.mark.parametrize("attempts", [1, 2])
async def test_a_failing_batch_fails_only_its_rows_and_counts_once_per_call_in_the_breaker(
    held: HeldModel, session: aiohttp.ClientSession, attempts: int
) -> None:
    client = client_of(held, session, attempts=attempts, fail_max=3)
    held.statuses = {1 + attempt: 503 for attempt in range(attempts)}
    first = await first_call_held(held, client)
    failing = [score(client, n) for n in range(1, 5)]
    await until(waiting(client, 4), "four rows waiting")
    held.release()
    assert "probability" in await first
    for task in failing:
        with pytest.raises(Unavailable) as caught:
            await task
        assert caught.value.status_code == 503
        assert "answered 503" in caught.value.detail
    # Each attempt is one call of four rows: a breaker counting rows would be open.
    assert held.calls == [1] + [4] * attempts
    assert client.breaker.failures == attempts
    assert client.breaker.state == "closed"
    after = await score(client, 5)
    assert after["probability"] == pytest.approx(held.expected(vector(5)), rel=1e-12)
    assert client.breaker.failures == 0


async def test_a_rejected_batch_is_each_of_its_rows_rejection(
    held: HeldModel, session: aiohttp.ClientSession
) -> None:
    client = client_of(held, session, attempts=2)
    held.statuses = {1: 400}
    first = await first_call_held(held, client)
    rejected = [score(client, n) for n in (1, 2)]
    await until(waiting(client, 2), "two rows waiting")
    held.release()
    await first
    errors = await asyncio.gather(*rejected, return_exceptions=True)
    assert all(isinstance(error, ModelRejected) for error in errors)
    assert errors[0] is not errors[1]
    assert {error.status_code for error in errors} == {502}  # type: ignore[union-attr]
    assert held.calls == [1, 2]  # a 4xx is not retried


async def test_a_versioned_call_goes_alone_at_once(
    held: HeldModel, session: aiohttp.ClientSession
) -> None:
    client = client_of(held, session)
    first = await first_call_held(held, client)
    replayed = await client.infer("d-9", vector(9), Deadline(LIMIT_S), version="3")
    assert replayed["probability"] == pytest.approx(held.expected(vector(9)), rel=1e-12)
    assert held.calls == [1, 1]
    held.release()
    await first


async def test_without_batching_every_row_is_a_call_of_its_own(
    held: HeldModel, session: aiohttp.ClientSession
) -> None:
    client = client_of(held, session, max_batch_size=1)
    assert client.batcher is None
    first = await first_call_held(held, client)
    others = [score(client, n) for n in range(1, 4)]
    await until(lambda: len(held.calls) == 4, "four calls")
    held.release()
    await asyncio.gather(first, *others)
    assert held.calls == [1, 1, 1, 1]


@pytest.mark.services
async def test_concurrent_scores_share_model_calls_and_each_gets_its_own_score(
    settings: GatewaySettings, servers: SampleServers, held: HeldModel, tmp_path: Path
) -> None:
    edits = [
        *roomy(),
        (f'endpoint = "{servers.model_url}"', f'endpoint = "{held.url}"'),
        ("max_batch_size = 32\nmax_batches_in_flight = 2\n", "max_batch_size = 8\n"),
    ]
    app = create_app(registry_variant(settings, tmp_path / "batching.toml", *edits))
    async with serve(app) as client:
        await seed(client, "c-b1", "m-b1", timedelta(seconds=1))
        batcher = app.plugins.get(GatewayPlugin).models["fraud"].batcher
        assert batcher is not None

        def scoring(n: int) -> asyncio.Task[Any]:
            context = {"amount": 10.0 + 90.0 * n, "card_present": n % 2 == 0}
            return asyncio.create_task(
                client.post("/score", json=body("c-b1", "m-b1", context=context))
            )

        held.hold.add(0)
        first = scoring(0)
        await until(lambda: len(held.calls) == 1, "the first model call")
        rest = [scoring(n) for n in range(1, 10)]
        await until(lambda: batcher.waiting == 9, "nine rows waiting")
        held.release()
        responses = await asyncio.gather(first, *rest)

    assert [response.status_code for response in responses] == [200] * 10
    assert held.calls == [1, 8, 1]
    stats = held.app.service
    assert (stats.infer_calls, stats.rows) == (3, 10)
    for response in responses:
        answer = response.json()
        values = [answer["features"][name]["value"] for name in FEATURES]
        probability = answer["outputs"]["probability"]
        assert probability == pytest.approx(held.expected(values), rel=1e-12)
    assert len({r.json()["outputs"]["probability"] for r in responses}) == 10
