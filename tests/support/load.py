"""Pieces of the multi-process fault tests: a steady load, an independent consumer
that counts events by ``ce_id``, and the one-line figures each test prints."""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer

from contracts.events import DECISION_MADE
from tests.support.keys import bearer


@dataclass
class LoadResult:
    """What a steady load got back."""

    statuses: collections.Counter[int | str] = field(default_factory=collections.Counter)
    # (seconds since the load started, status) of every request, in order of answer.
    timeline: list[tuple[float, int | str]] = field(default_factory=list)
    decision_ids: set[str] = field(default_factory=set)

    def ok(self) -> int:
        return self.statuses[200]


async def steady_load(
    base_url: str, rate: float, seconds: float, customers: int = 20, concurrency: int = 32
) -> LoadResult:
    """POST /score at ``rate`` requests per second for ``seconds`` (open loop, bounded).

    Requests that fail to connect count as ``"connect"``; each request has its own
    ``request_id``.
    """
    result = LoadResult()
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(
        base_url=base_url, timeout=10, limits=limits, headers=bearer("scorer")
    ) as http:

        async def one(n: int) -> None:
            body = {
                "model": "fraud",
                "entities": {"customer_id": f"c-{n % customers}", "merchant_id": "m-1"},
                "request_id": f"load-{uuid.uuid4().hex}",
                "context": {"amount": 10.0 + n % 50, "card_present": False},
            }
            async with gate:
                try:
                    response = await http.post("/score", json=body)
                except httpx.TransportError:
                    status: int | str = "connect"
                else:
                    status = response.status_code
                    if status == 200:
                        result.decision_ids.add(response.json()["decision_id"])
            result.statuses[status] += 1
            result.timeline.append((time.monotonic() - started, status))

        tasks = []
        total = int(rate * seconds)
        for n in range(total):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    return result


async def read_events(
    bootstrap: str, topic: str, expected: set[str], timeout: float = 30
) -> list[Any]:
    """Every record on ``topic`` (from the start) once each of ``expected`` ce_ids is seen.

    Reads on for half a second more, so that a duplicate arriving late is counted.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=500,
    )
    await consumer.start()
    records: list[Any] = []
    seen: set[str] = set()
    try:
        async with asyncio.timeout(timeout):
            while not expected <= seen:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
                    seen.update(ce_id(record) for record in batch)
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(batch)
    except TimeoutError:
        pass  # what is missing counts as lost
    finally:
        await consumer.stop()
    return records


def ce_id(record: Any) -> str:
    return str(dict(record.headers)["ce_id"].decode())


async def wait_drained(pg: asyncpg.Connection, timeout: float = 60) -> None:
    """Until no outbox row is pending (dead letters and what waits behind them aside)."""
    claimable = """
        SELECT count(*) FROM outbox AS o
        WHERE o.status = 'pending' AND NOT EXISTS (
            SELECT 1 FROM outbox AS p WHERE p.message_key = o.message_key
              AND p.status = 'dead_lettered' AND p.seq < o.seq)
    """
    async with asyncio.timeout(timeout):
        while await pg.fetchval(claimable):
            await asyncio.sleep(0.1)


async def committed_events(pg: asyncpg.Connection, event_type: str = DECISION_MADE) -> set[str]:
    rows = await pg.fetch("SELECT event_id FROM outbox WHERE event_type = $1", event_type)
    return {str(row["event_id"]) for row in rows}


async def unaudited(pg: asyncpg.Connection, decision_ids: set[str]) -> set[str]:
    """Decisions answered 200 that have no audit row."""
    rows = await pg.fetch(
        "SELECT decision_id FROM decisions WHERE decision_id = ANY($1::uuid[])",
        [uuid.UUID(d) for d in decision_ids],
    )
    return decision_ids - {str(row["decision_id"]) for row in rows}


async def commit_to_publish_ms(pg: asyncpg.Connection, after_seq: int = 0) -> tuple[float, float]:
    """p50 and p99 of commit-to-publish of events delivered at their first attempt."""
    row = await pg.fetchrow(
        """
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99
        FROM (SELECT extract(epoch FROM delivered_at - created_at) * 1000 AS d
              FROM outbox WHERE status = 'delivered' AND attempts = 1 AND seq > $1) AS delays
        """,
        after_seq,
    )
    assert row is not None
    return round(row["p50"] or 0.0, 1), round(row["p99"] or 0.0, 1)


def figures(name: str, committed: set[str], records: list[Any], **extra: Any) -> dict[str, Any]:
    """The figures of one run, printed as one JSON line (``pytest -s`` shows it)."""
    counts = collections.Counter(ce_id(record) for record in records)
    ours = {event: n for event, n in counts.items() if event in committed}
    summary = {
        "test": name,
        "committed": len(committed),
        "consumed": sum(ours.values()),
        "distinct": len(ours),
        "duplicates": sum(n - 1 for n in ours.values()),
        "lost": len(committed - set(ours)),
        **extra,
    }
    print("WRITEBACK-FIGURES " + json.dumps(summary), flush=True)
    return summary
