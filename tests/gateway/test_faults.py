"""Fault injection against real processes: sources that fail, hang and flap, a Redis
that stops, a model server that fails or hangs.

Breakers measure their reset timeout on a clock the test moves, and replies that must
arrive only once every request is waiting are held by a proxy the test releases, so
nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from litestar import Litestar

from gateway.app import create_app
from gateway.plugin import GatewayPlugin
from gateway.settings import GatewaySettings
from scoregate_dev.broker import free_port, wait_for_port
from tests.support.clock import ManualClock
from tests.support.gateway import registry_variant, roomy, serve
from tests.support.sample import SampleServers
from tests.support.scoring import body, seed

pytestmark = pytest.mark.services

Client = httpx.AsyncClient

RESET_MS = 500


@pytest.fixture
def registry_path(registry_path: Path) -> Path:
    """The sample registry with quick breakers and a cap of 2 calls on txn_stats."""
    text = registry_path.read_text().replace(
        "reset_timeout_ms = 10000", f"reset_timeout_ms = {RESET_MS}"
    )
    text = text.replace(
        'owner = "payments-analytics"\ntimeout_ms = 150',
        'owner = "payments-analytics"\ntimeout_ms = 150\nmax_concurrency = 2',
    )
    quick = f"{{ fail_max = 5, reset_timeout_ms = {RESET_MS} }}"
    text = text.replace("timeout_ms = 300\n", f"timeout_ms = 300\nbreaker = {quick}\n")
    store = f"{{ fail_max = 2, reset_timeout_ms = {RESET_MS} }}"
    text += f"\n[online_store]\ntimeout_ms = 50\nbreaker = {store}\n"
    registry_path.write_text(text)
    return registry_path


@pytest.fixture
def clock() -> ManualClock:
    """The clock every breaker of the test's gateway measures its reset timeout on."""
    return ManualClock()


def gateway_of(app: Litestar) -> GatewayPlugin:
    return app.plugins.get(GatewayPlugin)


def use_clock(app: Litestar, clock: ManualClock) -> None:
    """Put every breaker of a started gateway on ``clock``."""
    gateway = gateway_of(app)
    gateway.store.breaker.clock = clock
    for source in gateway.sources.values():
        source.breaker.clock = clock
    for model in gateway.models.values():
        model.breaker.clock = clock


@pytest.fixture
async def client(settings: GatewaySettings, clock: ManualClock) -> AsyncIterator[Client]:
    """A running gateway whose breakers reset only when the test moves ``clock``."""
    app = create_app(settings)
    async with serve(app) as http:
        use_clock(app, clock)
        yield http


async def until(condition: Callable[[], Awaitable[bool]], what: str, limit_s: float = 60) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` did not happen."""
    try:
        async with asyncio.timeout(limit_s):
            while not await condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {limit_s} s")


class HeldReplies:
    """A TCP proxy to the sample sources that passes requests on at once and holds the
    replies until the test releases them: a slow source whose slowness the test ends."""

    def __init__(self, target_url: str) -> None:
        self._target_port = int(target_url.rsplit(":", 1)[1])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> HeldReplies:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def release(self) -> None:
        """Let every held reply through, and every later one at once."""
        self._released.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers += [writer, up_writer]
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, hold=False)),
            asyncio.create_task(self._pipe(up_reader, writer, hold=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, hold: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if hold:
                    await self._released.wait()
                sink.write(data)
                await sink.drain()
        sink.transport.abort()


async def record(client: Client, answer: dict[str, Any]) -> dict[str, Any]:
    response = await client.get(f"/decisions/{answer['decision_id']}")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def breakers(client: Client) -> dict[str, str]:
    states: dict[str, str] = (await client.get("/health/ready")).json()["breakers"]
    return states


async def test_hanging_source_costs_at_most_the_deadline_then_the_policy(
    settings: GatewaySettings, tmp_path: Path, servers: SampleServers
) -> None:
    # The sources' and the model's own timeouts are a minute: only the request's deadline
    # can end the hanging call, so a source stage shorter than that was cut by the
    # deadline, and the model keeps enough of the budget on a busy machine.
    patient = registry_variant(settings, tmp_path / "patient.toml", *roomy())
    async with serve(create_app(patient)) as client:
        await seed(client, "c-h1", "m-h1", timedelta(hours=2))
        await servers.fault_source("txn_stats", "hang")
        for budget_ms in (4000, 2000):
            response = await client.post(
                "/score",
                json=body("c-h1", "m-h1"),
                headers={"X-Request-Timeout-Ms": str(budget_ms)},
            )
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["features"]["txn_count_30m"]["status"] == "stale"
            assert answer["features"]["distinct_merchants_7d"]["status"] == "default"
            assert answer["degraded"] is True
            audited = await record(client, answer)
            assert audited["timings"]["sources_ms"] < 30_000
            assert "before the request deadline" in audited["problems"]["txn_count_30m"]


async def test_breaker_opens_and_later_requests_do_not_wait_on_the_source(
    client: Client, servers: SampleServers
) -> None:
    await servers.fault_source("txn_stats", "hang")
    # Two attempts per request, fail_max 5: the third request opens the breaker.
    for i in range(3):
        await seed(client, f"c-o{i}", "m-o", timedelta(hours=2))
        assert (await client.post("/score", json=body(f"c-o{i}", "m-o"))).status_code == 200
    assert (await breakers(client))["source:txn_stats"] == "open"
    calls = (await servers.source_calls())["txn_stats"]
    assert calls == 5
    for i in range(3, 8):
        await seed(client, f"c-o{i}", "m-o", timedelta(hours=2))
        answer = (await client.post("/score", json=body(f"c-o{i}", "m-o"))).json()
        assert answer["features"]["txn_count_30m"]["status"] == "stale"
        audited = await record(client, answer)
        assert "open" in audited["problems"]["txn_count_30m"]
    assert (await servers.source_calls())["txn_stats"] == calls
    # Only a source breaker is open: the gateway stays ready, and says which is open.
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["breakers"]["source:txn_stats"] == "open"


async def test_half_open_admits_one_probe_and_recovery_closes_the_breaker(
    client: Client, servers: SampleServers, clock: ManualClock
) -> None:
    await servers.fault_source("txn_stats", "error")
    for i in range(3):
        await client.post("/score", json=body(f"c-p{i}", "m-p"))
    assert (await breakers(client))["source:txn_stats"] == "open"
    await servers.fault_source("txn_stats", "hang")
    before = (await servers.source_calls())["txn_stats"]
    clock.advance(RESET_MS / 1000)
    # Whether they overlap the probe or come after it failed, the others are refused.
    answers = await asyncio.gather(
        *(client.post("/score", json=body(f"c-q{i}", "m-p")) for i in range(10))
    )
    assert {a.status_code for a in answers} == {200}
    assert (await servers.source_calls())["txn_stats"] == before + 1
    assert (await breakers(client))["source:txn_stats"] == "open"

    await servers.fault_source("txn_stats", "ok")
    clock.advance(RESET_MS / 1000)
    answer = (await client.post("/score", json=body("c-r1", "m-p"))).json()
    assert answer["features"]["txn_count_30m"]["status"] == "fallback"
    assert (await breakers(client))["source:txn_stats"] == "closed"


async def test_flapping_source_is_served_between_failures(
    client: Client, servers: SampleServers
) -> None:
    # Every second call fails; one retry turns each failure into a success.
    await servers.fault_source("txn_stats", "flap", flap_every=2)
    for i in range(6):
        answer = (await client.post("/score", json=body(f"c-f{i}", "m-f"))).json()
        assert answer["features"]["txn_count_30m"]["status"] == "fallback"
    assert (await breakers(client))["source:txn_stats"] == "closed"


async def test_not_found_is_an_answer_not_a_failure(client: Client, servers: SampleServers) -> None:
    for i in range(8):
        response = await client.post("/score", json=body(f"unknown-{i}", "m-1"))
        assert response.status_code == 503
        assert response.json()["field"] == "features.kyc_level"
        assert "no such record" in response.json()["detail"]
    states = await breakers(client)
    assert states["source:customer_profile"] == "closed"
    assert states["source:txn_stats"] == "closed"


async def test_concurrency_cap_sends_the_excess_to_the_policy(
    settings: GatewaySettings, servers: SampleServers, tmp_path: Path
) -> None:
    async with HeldReplies(servers.sources_url) as held:
        txn = f'"{servers.sources_url}/txn"'
        local = registry_variant(
            settings, tmp_path / "held.toml", (txn, f'"{held.url}/txn"'), *roomy()
        )
        app = create_app(local)
        async with serve(app) as client:
            requests = [
                asyncio.create_task(client.post("/score", json=body(f"c-cap{i}", "m-c")))
                for i in range(5)
            ]

            async def two_held_three_answered() -> bool:
                calls = (await servers.source_calls())["txn_stats"]
                return calls == 2 and sum(r.done() for r in requests) == 3

            await until(two_held_three_answered, "two calls held and three requests answered")
            held.release()
            answers = await asyncio.gather(*requests)
            statuses = sorted(a.json()["features"]["txn_count_30m"]["status"] for a in answers)
            assert statuses == ["default", "default", "default", "fallback", "fallback"]
            assert (await servers.source_calls())["txn_stats"] == 2
            # Refused by the cap, not failed: the breaker does not count it.
            assert (await breakers(client))["source:txn_stats"] == "closed"


async def test_concurrent_requests_for_one_entity_share_one_source_call(
    settings: GatewaySettings, servers: SampleServers, tmp_path: Path
) -> None:
    async with HeldReplies(servers.sources_url) as held:
        local = registry_variant(
            settings,
            tmp_path / "held.toml",
            (servers.sources_url, held.url),
            *roomy(),
        )
        app = create_app(local)
        async with serve(app) as client:
            gateway = gateway_of(app)
            sources = gateway.sources.values()
            written: list[tuple[str, str]] = []
            write = gateway.store.write

            async def counted(entity: str, entity_id: str, *args: Any) -> list[str]:
                written.append((entity, entity_id))
                return await write(entity, entity_id, *args)

            gateway.store.write = counted  # type: ignore[method-assign]
            requests = [
                asyncio.create_task(client.post("/score", json=body("c-one", "m-one")))
                for _ in range(100)
            ]

            calls = {"customer_profile": 1, "txn_stats": 1, "merchant_risk": 1}

            async def all_waiting() -> bool:
                joined = all(source.shared == 99 for source in sources)
                return joined and await servers.source_calls() == calls

            # Every request waits on the one call per source before any reply comes back.
            await until(all_waiting, "one call per source with 99 requests joining it")
            held.release()
            answers = await asyncio.gather(*requests)
            await gateway.assembler.drain()  # type: ignore[union-attr]
    assert {a.status_code for a in answers} == {200}, {a.text for a in answers}
    assert {a.json()["features"]["kyc_level"]["status"] for a in answers} == {"fallback"}
    assert await servers.source_calls() == calls
    # What the shared calls fetched is written back once per record, not once per request.
    assert sorted(written) == [("customer", "c-one"), ("customer", "c-one"), ("merchant", "m-one")]


async def test_a_shared_call_cut_by_its_starters_deadline_is_made_again_for_the_others(
    settings: GatewaySettings, servers: SampleServers, tmp_path: Path
) -> None:
    async with HeldReplies(servers.sources_url) as held:
        profile = f'"{servers.sources_url}/profile"'
        local = registry_variant(
            settings, tmp_path / "held.toml", (profile, f'"{held.url}/profile"'), *roomy()
        )
        app = create_app(local)
        async with serve(app) as client:
            profiles = gateway_of(app).sources["customer_profile"]
            hurried = asyncio.create_task(
                client.post(
                    "/score", json=body("c-cut", "m-cut"), headers={"X-Request-Timeout-Ms": "2000"}
                )
            )

            async def profile_calls(n: int) -> bool:
                return (await servers.source_calls())["customer_profile"] == n

            await until(lambda: profile_calls(1), "the first request's profile call")
            patient = asyncio.create_task(client.post("/score", json=body("c-cut", "m-cut")))

            async def joined() -> bool:
                return profiles.shared == 1

            await until(joined, "the second request joining the first one's call")
            # The first request's deadline ends the shared call (kyc_level's policy is
            # fail: the deadline, not the source, refused it); the second makes its own.
            assert (await hurried).status_code == 504
            await until(lambda: profile_calls(2), "the second request's own profile call")
            held.release()
            answer = await patient
            assert answer.status_code == 200, answer.text
            assert answer.json()["features"]["kyc_level"]["status"] == "fallback"
            assert (await breakers(client))["source:customer_profile"] == "closed"


async def test_requests_out_of_budget_leave_every_breaker_closed(
    client: Client, servers: SampleServers
) -> None:
    await seed(client, "c-known", "m-known", timedelta(seconds=5))
    # New customers: each would need the store, all three sources and the model.
    answers = await asyncio.gather(
        *(
            client.post(
                "/score", json=body(f"c-new{i}", "m-new"), headers={"X-Request-Timeout-Ms": "1"}
            )
            for i in range(100)
        )
    )
    assert {a.status_code for a in answers} <= {503, 504}
    assert set((await breakers(client)).values()) == {"closed"}
    answer = (await client.post("/score", json=body("c-known", "m-known"))).json()
    assert answer["degraded"] is False
    assert answer["features"]["kyc_level"]["source"] == "online_store"
    fetched = (await client.post("/score", json=body("c-new0", "m-new"))).json()
    assert fetched["features"]["kyc_level"]["status"] == "fallback"


async def test_a_model_call_cut_by_the_request_deadline_does_not_count_against_the_model(
    client: Client, servers: SampleServers
) -> None:
    await seed(client, "c-m3", "m-m3", timedelta(seconds=1))
    await servers.fault_model("hang")
    for _ in range(10):
        response = await client.post(
            "/score", json=body("c-m3", "m-m3"), headers={"X-Request-Timeout-Ms": "100"}
        )
        assert response.status_code == 504
    assert (await breakers(client))["model:fraud"] == "closed"
    await servers.fault_model("ok")
    assert (await client.post("/score", json=body("c-m3", "m-m3"))).status_code == 200


async def test_model_down_is_503_and_its_open_breaker_answers_at_once(
    client: Client, servers: SampleServers, pg: asyncpg.Connection, clock: ManualClock
) -> None:
    await seed(client, "c-m1", "m-m1", timedelta(seconds=1))
    await servers.fault_model("error")
    for _ in range(3):
        response = await client.post("/score", json=body("c-m1", "m-m1"))
        assert response.status_code == 503
    calls = await model_calls(servers)
    assert calls == 5
    response = await client.post("/score", json=body("c-m1", "m-m1"))
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "circuit open" in response.json()["detail"]
    assert await model_calls(servers) == calls
    assert await pg.fetchval("SELECT count(*) FROM decisions") == 0

    await servers.fault_model("ok")
    clock.advance(RESET_MS / 1000)
    assert (await client.post("/score", json=body("c-m1", "m-m1"))).status_code == 200


async def test_model_that_never_answers_is_504_at_the_deadline(
    client: Client, servers: SampleServers
) -> None:
    await seed(client, "c-m2", "m-m2", timedelta(seconds=1))
    await servers.fault_model("hang")
    response = await client.post(
        "/score", json=body("c-m2", "m-m2"), headers={"X-Request-Timeout-Ms": "200"}
    )
    assert response.status_code == 504
    assert response.json()["field"] == "model"


async def model_calls(servers: SampleServers) -> int:
    async with servers.http.get(f"{servers.model_url}/_stats") as response:
        calls: int = (await response.json())["infer_calls"]
        return calls


class OwnRedis:
    """A redis-server of the test's own, on a free port, that the test can stop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
        )
        await wait_for_port("127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()


@pytest.fixture
async def own_redis() -> AsyncIterator[OwnRedis]:
    server = OwnRedis()
    await server.start()
    yield server
    await server.stop()


async def test_redis_stopped_means_degraded_answers_from_sources(
    settings: GatewaySettings, own_redis: OwnRedis, servers: SampleServers, clock: ManualClock
) -> None:
    local = msgspec.structs.replace(settings, redis_url=own_redis.url)
    app = create_app(local)
    async with serve(app) as client:
        use_clock(app, clock)
        await seed(client, "c-r1", "m-r1", timedelta(seconds=1))
        fresh = (await client.post("/score", json=body("c-r1", "m-r1"))).json()
        assert fresh["features"]["kyc_level"]["status"] == "fresh"
        assert fresh["degraded"] is False

        await own_redis.stop()
        for _ in range(4):
            response = await client.post("/score", json=body("c-r1", "m-r1"))
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["degraded"] is True
            assert answer["features"]["kyc_level"]["status"] == "fallback"
            assert answer["features"]["chargeback_rate_90d"]["status"] == "fallback"
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"]["ok"] is False
        assert ready.json()["breakers"]["online_store"] == "open"
        push = await client.post(
            "/features/push",
            json={
                "entities": {"customer_id": "c-r1"},
                "features": {"kyc_level": 2},
                "event_time": "2026-01-01T00:00:00Z",
                "lineage": {"source_system": "cdc", "source_ref": "r:1"},
            },
        )
        assert push.status_code == 503

        await own_redis.start()
        clock.advance(RESET_MS / 1000)
        # The probe read finds an empty Redis (it keeps nothing): sources, then fresh.
        answer = (await client.post("/score", json=body("c-r2", "m-r1"))).json()
        assert answer["features"]["kyc_level"]["status"] == "fallback"
        assert (await client.get("/health/ready")).json()["breakers"]["online_store"] == "closed"
        again: dict[str, Any] = {}

        async def served_fresh() -> bool:
            again.update((await client.post("/score", json=body("c-r2", "m-r1"))).json())
            return bool(again["features"]["kyc_level"]["status"] == "fresh")

        # The fetched values reach Redis by a write behind the answer.
        await until(served_fresh, "the read-through write reaching Redis")
        assert again["degraded"] is False


def test_redis_server_binary_is_available() -> None:
    # The Redis fault test starts its own server; say clearly when it cannot.
    import shutil

    assert shutil.which("redis-server"), f"redis-server not on PATH for {sys.executable}"


async def test_requests_over_the_in_flight_cap_are_refused_at_once(
    settings: GatewaySettings, servers: SampleServers, tmp_path: Path
) -> None:
    async with HeldReplies(servers.model_url) as held:
        local = registry_variant(
            settings, tmp_path / "held.toml", (servers.model_url, held.url), *roomy()
        )
        capped = msgspec.structs.replace(local, max_in_flight=2)
        app = create_app(capped)
        async with serve(app) as client:
            await seed(client, "c-cap", "m-cap", timedelta(seconds=1))
            requests = [
                asyncio.create_task(client.post("/score", json=body("c-cap", "m-cap")))
                for _ in range(6)
            ]

            async def two_held_four_refused() -> bool:
                in_flight = gateway_of(app).admission.in_flight
                return in_flight == 2 and sum(r.done() for r in requests) == 4

            await until(two_held_four_refused, "two requests held at the model, four refused")
            held.release()
            answers = await asyncio.gather(*requests)
            statuses = sorted(a.status_code for a in answers)
            assert statuses == [200, 200, 503, 503, 503, 503]
            refused = next(a for a in answers if a.status_code == 503)
            assert refused.headers["retry-after"] == "1"
            assert "overloaded" in refused.json()["detail"]
            # The cap frees as requests finish.
            assert (await client.post("/score", json=body("c-cap", "m-cap"))).status_code == 200
