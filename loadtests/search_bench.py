"""Decision search at a million decisions: seed, then time search pages over HTTP.

Seeds ``--rows`` decisions (default 1,000,000) into a database of its own, spread over
five months, 50,000 subjects and two models, 1% rolled back; starts the dev stack on
that database and times ``GET /decisions`` pages as an auditor: by subject, by model,
by model 20 pages deep (following cursors), rolled-back only, and a one-day window.
Prints p50/p99 per kind and writes ``loadtests/results/search-<time>.json``.

    .venv/bin/python loadtests/search_bench.py --rows 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from scoregate_dev.stack import DevStack
from writeback import ensure_database, migrate

RESULTS = Path(__file__).parent / "results"
DATABASE = "postgresql://postgres@127.0.0.1:5432/scoregate_search_bench"
SUBJECTS = 50_000

SEED = """
INSERT INTO decisions (decision_id, caller, request_id, model_name, model_version,
                       subject_entity, subject_id, decided_at, committed_at, record)
SELECT id, 'kbench', id::text, model, '3', 'customer', subject, at, at,
       json_build_object(
           'decision_id', id, 'request_id', id::text,
           'model', json_build_object('name', model, 'version', '3'),
           'subject', json_build_object('entity', 'customer', 'key', 'customer_id',
                                        'id', subject),
           'decision', (ARRAY['approve', 'approve', 'approve', 'review', 'decline'])[1 + n % 5],
           'degraded', n % 13 = 0,
           'outputs', json_build_object('probability', (n % 1000) / 1000.0))
FROM (
    SELECT n, gen_random_uuid() AS id,
           CASE WHEN n % 10 = 0 THEN 'credit' ELSE 'fraud' END AS model,
           'c-' || (1 + (n * 7919) % $3) AS subject,
           now() - ($2::float8 * n / $1) * interval '1 second' AS at
    FROM generate_series($4::bigint, $5::bigint) AS n
) AS rows
"""
ROLLBACKS = """
INSERT INTO rollbacks (decision_id, reason, rolled_back_by, rolled_back_at, event_id)
SELECT decision_id, 'bench', 'kbench', decided_at, gen_random_uuid()
FROM decisions TABLESAMPLE BERNOULLI (1)
ON CONFLICT DO NOTHING
"""


async def seed(rows: int) -> None:
    await ensure_database(DATABASE)
    await migrate(DATABASE)
    conn = await asyncpg.connect(DATABASE)
    try:
        have = await conn.fetchval("SELECT count(*) FROM decisions")
        if have >= rows:
            print(f"{have} decisions already seeded")
            return
        span_s = 150 * 86400
        for month in range(-6, 1):
            await conn.execute(
                "SELECT scoregate_ensure_month_partition('decisions',"
                " (date_trunc('month', now()) + $1 * interval '1 month')::date)",
                month,
            )
        started = time.perf_counter()
        step = 100_000
        for first in range(have + 1, rows + 1, step):
            last = min(rows, first + step - 1)
            await conn.execute(SEED, rows, span_s, SUBJECTS, first, last)
            print(f"seeded {last} decisions ({time.perf_counter() - started:.0f} s)", flush=True)
        await conn.execute(ROLLBACKS)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def timed(http: aiohttp.ClientSession, url: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    async with http.get(url) as response:
        response.raise_for_status()
        page: dict[str, Any] = await response.json()
    return (time.perf_counter() - started) * 1000, page


async def bench(base: str, headers: dict[str, str], samples: int) -> dict[str, Any]:
    rng = random.Random(5)
    kinds: dict[str, list[float]] = {
        "by_subject": [],
        "by_model_first_page": [],
        "by_model_20_pages_deep": [],
        "rolled_back": [],
        "one_day_window": [],
    }
    async with aiohttp.ClientSession(base_url=base, headers=headers) as http:
        for _ in range(samples):
            subject = f"c-{rng.randint(1, SUBJECTS)}"
            kinds["by_subject"].append((await timed(http, f"/decisions?subject={subject}"))[0])
            kinds["by_model_first_page"].append(
                (await timed(http, "/decisions?model=credit&limit=50"))[0]
            )
            kinds["rolled_back"].append(
                (await timed(http, "/decisions?status=rolled_back&limit=50"))[0]
            )
            day = rng.randint(1, 140)
            kinds["one_day_window"].append(
                (
                    await timed(
                        http,
                        "/decisions?limit=50&since="
                        + time.strftime(
                            "%Y-%m-%dT00:00:00Z", time.gmtime(time.time() - day * 86400)
                        )
                        + "&until="
                        + time.strftime(
                            "%Y-%m-%dT00:00:00Z", time.gmtime(time.time() - (day - 1) * 86400)
                        ),
                    )
                )[0]
            )
        for _ in range(max(1, samples // 10)):
            cursor = ""
            for _page in range(20):
                elapsed, page = await timed(http, f"/decisions?model=fraud&limit=50{cursor}")
                kinds["by_model_20_pages_deep"].append(elapsed)
                cursor = f"&cursor={page['next_cursor']}"
    return {
        kind: {
            "pages": len(values),
            "p50_ms": round(statistics.median(values), 2),
            "p99_ms": pct(values, 0.99),
        }
        for kind, values in kinds.items()
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    await seed(args.rows)
    os.environ["SCOREGATE_DATABASE_URL"] = DATABASE
    stack = DevStack(port=args.port)
    try:
        await stack.start()
        conn = await asyncpg.connect(DATABASE)
        decisions = await conn.fetchval("SELECT count(*) FROM decisions")
        await conn.close()
        results = await bench(stack.url, stack.headers("auditor"), args.samples)
    finally:
        await stack.stop()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "decisions": decisions,
        "page_size": 50,
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"search-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    asyncio.run(main())
