"""End-to-end freshness: from producing a feature update to ``/score`` serving it.

Starts the dev stack (the gateway, its ingest worker, the sample operational system
streaming the sample customers and merchants) and, while ``/score`` runs open loop at
``--rate`` (default 200/s) on the sample customers, probes the path a value takes:

1. a probe customer of its own (``c-probe-N``, in no other stream) gets a
   feature-update event with a new ``txn_count_30m``, produced to the registry's
   feature-update topic (the clock starts just before the producer is handed it);
2. ``/score`` is asked for that customer again and again, each request as soon as the
   previous one answered, until the answer serves the new value (the clock stops when
   that answer arrives).

The time between is what a decision service sees: broker, ingest worker, Redis write,
and the gateway's read. Its resolution is one ``/score`` round trip (a few ms), and
its tail includes ``/score``'s own. ``stored`` stops the clock instead at the served
value's ``ingested_at`` (when the ingest worker took the batch, to the millisecond):
the path to the store alone, without the gateway's latency. The
probes' own requests come on top of the load and are counted in the figures. Rounds
are measured one after another; the summary has each round's percentiles and their
medians.

    .venv/bin/python loadtests/freshness.py                   # 3 rounds of 40 s
    .venv/bin/python loadtests/freshness.py --rounds 1 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from open_loop import percentile, run_phase
from traffic import MODEL, score_body

from scoregate_dev.broker import free_port
from scoregate_dev.operational import SampleEvents
from scoregate_dev.stack import DevStack

RESULTS = Path(__file__).with_name("results")
PROBES = 8


class Probe:
    """Produces updates for the probe customers and waits for ``/score`` to serve them."""

    def __init__(self, stack: DevStack, events: SampleEvents, producer: AIOKafkaProducer) -> None:
        self._stack = stack
        self._events = events
        self._producer = producer
        self._markers = itertools.count(1000)
        self.polls = 0
        self.errors = 0

    def _update(self, customer: str, values: dict[str, Any]) -> Any:
        return self._events.feature_update(
            customer,
            values,
            source="/loadtests/freshness",
            source_system="freshness-probe",
            source_ref=f"probe:{customer}:{values['txn_count_30m']}",
        )

    async def prime(self, session: aiohttp.ClientSession, customer: str) -> None:
        """Give the probe customer every customer feature, so its requests stay fresh."""
        values = {
            "txn_count_30m": next(self._markers),
            "txn_amount_sum_24h": 120.0,
            "distinct_merchants_7d": 3,
            "account_age_days": 400,
            "kyc_level": 3,
            "country_risk": 0.1,
        }
        await self._send(customer, values)
        await self._served(session, customer, values["txn_count_30m"], limit_s=60)

    async def once(self, session: aiohttp.ClientSession, customer: str) -> tuple[float, float]:
        """Milliseconds from producing a new value to the first answer serving it, and to
        the ingest worker storing it (the served value's ``ingested_at``)."""
        marker = next(self._markers)
        wall = time.time()
        started = time.perf_counter()
        await self._send(customer, {"txn_count_30m": marker})
        ingested_at = await self._served(session, customer, marker, limit_s=30)
        return (time.perf_counter() - started) * 1000, (ingested_at - wall) * 1000

    async def _send(self, customer: str, values: dict[str, Any]) -> None:
        record = self._update(customer, values)
        await self._producer.send(
            record.topic, record.value, key=record.key, headers=record.headers
        )

    async def _served(
        self, session: aiohttp.ClientSession, customer: str, marker: int, limit_s: float
    ) -> float:
        """Ask ``/score`` until it serves ``marker``; when the value was stored (epoch s)."""
        body = {
            "model": MODEL,
            "entities": {"customer_id": customer, "merchant_id": "m-1"},
            "context": {"amount": 25.0, "card_present": True},
        }
        async with asyncio.timeout(limit_s):
            while True:
                self.polls += 1
                async with session.post(
                    f"{self._stack.url}/score", json=body, headers=self._stack.headers("scorer")
                ) as response:
                    answer = await response.json()
                if response.status != 200:
                    self.errors += 1
                    await asyncio.sleep(0.01)
                    continue
                served = answer["features"]["txn_count_30m"]
                if served["value"] == marker:
                    return datetime.fromisoformat(served["ingested_at"]).timestamp()


async def probe_round(
    probe: Probe, session: aiohttp.ClientSession, seconds: float, interval_s: float
) -> list[tuple[float, float]]:
    """Probe every ``interval_s`` for ``seconds``, cycling over the probe customers."""
    customers = itertools.cycle(f"c-probe-{i}" for i in range(1, PROBES + 1))
    found: list[tuple[float, float]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        due = time.monotonic() + interval_s
        found.append(await probe.once(session, next(customers)))
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    return found


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "probes": len(values),
        "p50_ms": percentile(values, 0.5),
        "p95_ms": percentile(values, 0.95),
        "p99_ms": percentile(values, 0.99),
        "max_ms": round(max(values), 2) if values else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the stack, prime the probes, then measure ``args.rounds`` rounds."""
    stack = DevStack(port=free_port(), customers=args.customers)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rate_per_s": args.rate,
        "seconds_per_round": args.seconds,
    }
    try:
        await stack.start()
        await stack.seed()
        if stack.operational is None:
            raise RuntimeError("the registry has no streams to probe")
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.env["SCOREGATE_KAFKA_BOOTSTRAP"],
            enable_idempotence=False,
            acks="all",
            linger_ms=0,
        )
        await producer.start()
        connector = aiohttp.TCPConnector(limit=512)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                probe = Probe(stack, stack.operational.events, producer)
                for i in range(1, PROBES + 1):
                    await probe.prime(session, f"c-probe-{i}")
                rounds = []
                for number in range(args.rounds):
                    polls_before = probe.polls
                    load = run_phase(
                        session,
                        f"{stack.url}/score",
                        f"load {number + 1}",
                        args.rate,
                        args.seconds,
                        lambda rng: score_body(rng, args.customers, None),
                        seed=number + 1,
                        headers=stack.headers("scorer"),
                    )
                    loaded, found = await asyncio.gather(
                        load, probe_round(probe, session, args.seconds, args.interval)
                    )
                    row = {
                        "load": loaded.summary(),
                        "freshness": _summary([served for served, _ in found]),
                        "stored": _summary([stored for _, stored in found]),
                        "probe_requests_per_s": round(
                            (probe.polls - polls_before) / args.seconds, 1
                        ),
                    }
                    print(json.dumps(row), flush=True)
                    rounds.append(row)
                report["rounds"] = rounds
                report["probe_errors"] = probe.errors
        finally:
            await producer.stop()
    finally:
        await stack.stop()

    def median(part: str, key: str) -> float | None:
        values = [r[part][key] for r in report["rounds"] if r[part][key] is not None]
        return round(statistics.median(values), 2) if values else None

    report["medians"] = {
        "freshness_p50_ms": median("freshness", "p50_ms"),
        "freshness_p99_ms": median("freshness", "p99_ms"),
        "freshness_max_ms": median("freshness", "max_ms"),
        "stored_p50_ms": median("stored", "p50_ms"),
        "stored_p99_ms": median("stored", "p99_ms"),
        "score_p50_ms": median("load", "p50_ms"),
        "score_p99_ms": median("load", "p99_ms"),
        "score_achieved_per_s": median("load", "achieved_per_s"),
    }
    return report


def main() -> None:
    """Run the freshness benchmark and print and keep its report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="/score load per second")
    parser.add_argument("--seconds", type=float, default=40.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between probes")
    parser.add_argument("--customers", type=int, default=200)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps(report["medians"], indent=2))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"freshness-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
