"""PostgreSQL down, route by route: every route and page that needs it answers 503 with
``Retry-After`` and comes back by itself.

Two outages a caller sees: the connection cut (a TCP proxy between the gateway and
PostgreSQL stops, aborting every connection and refusing new ones), and a demoted
primary that stays reachable but refuses writes (``default_transaction_read_only``
with the gateway's sessions terminated, as a failover leaves them).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
import httpx
import msgspec
import pytest

from gateway.app import create_app
from gateway.auth import COOKIE
from gateway.settings import GatewaySettings
from tests.support.gateway import serve
from tests.support.keys import KEYS
from tests.support.scoring import body, seed
from tests.support.services import pg_admin
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.services

Call = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
# Long enough for a loaded machine to reconnect; an outage that outlives it is a failure.
HEAL_S = 30


def routes(decision_id: str, event_id: str) -> dict[str, Call]:
    """Every route that reads or writes PostgreSQL, by name."""
    page = {"Cookie": f"{COOKIE}={KEYS['auditor']}", "Authorization": ""}
    return {
        "POST /score": lambda h: h.post("/score", json=body("c-pg", "m-pg")),
        "GET /decisions": lambda h: h.get("/decisions", params={"subject": "c-pg"}),
        "GET /decisions/{id}": lambda h: h.get(f"/decisions/{decision_id}"),
        "GET access-log": lambda h: h.get(f"/decisions/{decision_id}/access-log"),
        "POST rollback": lambda h: h.post(
            f"/decisions/{decision_id}/rollback", json={"reason": "outage drill"}
        ),
        "POST replay": lambda h: h.post(f"/decisions/{decision_id}/replay"),
        "GET /audit/verify": lambda h: h.get("/audit/verify"),
        "GET /dlq": lambda h: h.get("/dlq"),
        "POST redrive": lambda h: h.post(f"/dlq/{event_id}/redrive"),
        "GET /ui/decisions": lambda h: h.get("/ui/decisions", headers=page),
        "GET /ui/decisions/{id}": lambda h: h.get(f"/ui/decisions/{decision_id}", headers=page),
    }


async def statuses(http: httpx.AsyncClient, calls: dict[str, Call]) -> dict[str, int]:
    return {name: (await call(http)).status_code for name, call in calls.items()}


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Poll ``check`` until it holds; fail with ``what`` if it does not within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while not await check():
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(what) from None


async def decided(http: httpx.AsyncClient, pg_url: str) -> tuple[str, str]:
    """A decision of ``c-pg`` and its event id."""
    await seed(http, "c-pg", "m-pg", timedelta(seconds=5))
    scored = await http.post("/score", json=body("c-pg", "m-pg"))
    assert scored.status_code == 200, scored.text
    decision_id = scored.json()["decision_id"]
    conn = await asyncpg.connect(pg_url)
    try:
        event_id = await conn.fetchval(
            "SELECT event_id FROM outbox WHERE decision_id = $1", uuid.UUID(decision_id)
        )
    finally:
        await conn.close()
    return decision_id, str(event_id)


@asynccontextmanager
async def cut_able() -> AsyncIterator[TcpProxy]:
    """A proxy to PostgreSQL, stopped at the end whatever happened."""
    proxy = TcpProxy()
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def test_every_route_answers_503_with_retry_after_while_postgresql_is_cut(
    settings: GatewaySettings, database_url: str
) -> None:
    async with cut_able() as proxy:
        config = msgspec.structs.replace(
            settings.writeback, database_url=proxy.dsn(database_url), pool_min_size=1
        )
        app = create_app(msgspec.structs.replace(settings, writeback=config))
        async with serve(app) as http:
            decision_id, event_id = await decided(http, database_url)
            calls = routes(decision_id, event_id)
            before = await statuses(http, calls)
            assert 503 not in before.values(), before

            await proxy.stop()
            answers = {name: await call(http) for name, call in calls.items()}
            wrong = {
                name: (answer.status_code, answer.text[:200])
                for name, answer in answers.items()
                if answer.status_code != 503 or "retry-after" not in answer.headers
            }
            assert not wrong, wrong
            assert answers["GET /decisions"].json()["field"] == "audit"
            assert "Unavailable" in answers["GET /ui/decisions"].text

            await proxy.start()

            async def healed() -> bool:
                return 503 not in (await statuses(http, calls)).values()

            await until(healed, HEAL_S, "the gateway did not reconnect to PostgreSQL")


async def test_a_demoted_primary_is_a_503_that_heals_when_a_writable_one_is_back(
    settings: GatewaySettings, database_url: str
) -> None:
    name = database_url.rpartition("/")[2]
    async with serve(create_app(settings)) as http:
        decision_id, event_id = await decided(http, database_url)
        writes = {
            "POST /score": routes(decision_id, event_id)["POST /score"],
            # Reading a decision's context records the read: a write too.
            "GET /decisions/{id}": routes(decision_id, event_id)["GET /decisions/{id}"],
        }

        await pg_admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        await pg_admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )

        async def refused() -> bool:
            answers = [await call(http) for call in writes.values()]
            return all(a.status_code == 503 and "retry-after" in a.headers for a in answers)

        await until(refused, HEAL_S, "writes to a read-only primary were not 503")
        search = await http.get("/decisions", params={"subject": "c-pg"})
        assert search.status_code == 200, "a read needs no writable primary"

        await pg_admin(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')

        async def healed() -> bool:
            answers = [await call(http) for call in writes.values()]
            return all(answer.status_code == 200 for answer in answers)

        await until(healed, HEAL_S, "the pool kept its read-only sessions")
