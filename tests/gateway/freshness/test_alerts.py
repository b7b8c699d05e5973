"""Freshness burn-rate alerts end to end, with real services: two ``scoregate serve``
processes on one database (each running the evaluator every second), an ingest worker
feeding a stream topic of the test's own, ``/score`` load on both, and an independent
aiokafka consumer of the alerts topic on the broker.

When the feature's ingest stops, its served values age past the SLA and the alert
fires once (one ``scoregate.freshness.breached`` CloudEvent, one WARNING across both
processes); when ingest resumes it clears once (``scoregate.freshness.recovered``).

The test prints one ``ALERT-FIGURES {...}`` line (run with ``-s`` to see it): the time
from the breach's start (ingest stopped plus the SLA, and the first answer out of the
SLA) to the breached event seen by the consumer, and from ingest's resumption to the
recovered event, with the windows used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from contracts.events import (
    FRESHNESS_BREACHED,
    FRESHNESS_RECOVERED,
    FreshnessAlertEvent,
    FreshnessBreached,
    FreshnessRecovered,
)
from contracts.registry import OnlineStoreSpec
from gateway.auth import COOKIE
from gateway.deadline import Deadline
from gateway.features.online_store import OnlineStore
from gateway.ingest.worker import IngestSettings
from gateway.settings import GatewaySettings
from scoregate_dev.broker import LocalBroker, free_port, wait_for_port
from tests.support.ingest import create_topic, feature_update, produce, running
from tests.support.keys import API_KEYS, KEYS, bearer

pytestmark = pytest.mark.services

FEATURE = "txn_count_30m"
SLA_MS = 3000
LONG_S, SHORT_S = 20, 5
TARGET = 0.9
THRESHOLD = 2.0  # a fifth of the serves out of the SLA in both windows
FRESHNESS = f"""
[freshness]
objective = {{ target = {TARGET}, period_days = 1 }}

[[freshness.alerts]]
name = "fast"
long_window_s = {LONG_S}
short_window_s = {SHORT_S}
burn_rate = {THRESHOLD}
"""
decoder = msgspec.json.Decoder(FreshnessAlertEvent)


@dataclass
class Alerts:
    """What the independent consumer has seen on the alerts topic, with arrival times."""

    topic: str
    records: list[tuple[float, ConsumerRecord[bytes, bytes]]] = field(default_factory=list)

    def of(self, event_type: str) -> list[tuple[float, ConsumerRecord[bytes, bytes]]]:
        return [
            (at, record)
            for at, record in self.records
            if dict(record.headers).get("ce_type") == event_type.encode()
        ]

    async def until(self, event_type: str, limit_s: float = 90) -> float:
        async with asyncio.timeout(limit_s):
            while not self.of(event_type):
                await asyncio.sleep(0.05)
        return self.of(event_type)[0][0]


@dataclass
class Load:
    """``/score`` on both gateways, noting when answers start and stop being within the SLA."""

    urls: list[str]
    answers: int = 0
    failures: list[str] = field(default_factory=list)
    # (wall time, whether the feature was served within its SLA)
    served: list[tuple[float, bool]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event, rate: float = 20.0) -> None:
        async with httpx.AsyncClient(timeout=10, headers=bearer("scorer")) as http:
            n = 0
            while not stop.is_set():
                url = self.urls[n % len(self.urls)]
                n += 1
                started = time.monotonic()
                body = {
                    "model": "fraud",
                    "entities": {"customer_id": "c-1", "merchant_id": "m-1"},
                    "request_id": f"alerts-{uuid.uuid4().hex}",
                    "context": {"amount": 12.5, "card_present": False},
                }
                try:
                    response = await http.post(f"{url}/score", json=body)
                except httpx.TransportError as exc:
                    self.failures.append(repr(exc))
                else:
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        value = response.json()["features"][FEATURE]
                        within = (
                            value["staleness_ms"] is not None
                            and value["staleness_ms"] <= value["max_staleness_ms"]
                        )
                        self.answers += 1
                        self.served.append((time.time(), within))
                await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))

    def first(self, within: bool, after: float) -> float | None:
        return next((at for at, ok in self.served if at > after and ok is within), None)


@pytest.fixture
def alerts_topic() -> str:
    return f"alerts-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def stream_topic() -> str:
    return f"features-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def registry_file(settings: GatewaySettings, tmp_path: Path, stream_topic: str) -> Path:
    """The sample registry with the feature fed only by ingest (no source to fall back
    to, so a stale value is served stale), a short SLA, the test's stream topic and
    short alert windows."""
    text = settings.registry_path.read_text()
    old = """name = "txn_count_30m"
entity = "customer"
dtype = "int64"
max_staleness_ms = 60000
source = "txn_stats"
path = "/customers/{customer_id}/txn-stats"
"""
    assert old in text
    text = text.replace(
        old,
        f"""name = "txn_count_30m"
entity = "customer"
dtype = "int64"
max_staleness_ms = {SLA_MS}
""",
    )
    text = text.replace('topic = "features.customer"', f'topic = "{stream_topic}"')
    text = re.sub(
        r'topic = "riskdb.public.merchants"', f'topic = "{stream_topic}-cdc"', text, count=1
    )
    path = tmp_path / "alerts-registry.toml"
    path.write_text(text + FRESHNESS)
    return path


@pytest.fixture
async def consumer(broker: LocalBroker, alerts_topic: str) -> AsyncIterator[Alerts]:
    """An aiokafka consumer of the alerts topic, reading from its start in the background."""
    await create_topic(broker.bootstrap, alerts_topic)
    seen = Alerts(alerts_topic)
    reader = AIOKafkaConsumer(
        alerts_topic,
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await reader.start()

    async def read() -> None:
        while True:
            batches = await reader.getmany(timeout_ms=100)
            for batch in batches.values():
                seen.records.extend((time.time(), record) for record in batch)

    task = asyncio.create_task(read())
    yield seen
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await reader.stop()


@pytest.fixture
async def gateways(
    settings: GatewaySettings, registry_file: Path, alerts_topic: str, tmp_path: Path
) -> AsyncIterator[list[tuple[str, Path]]]:
    """Two ``scoregate serve`` processes on the test's database, evaluating every second."""
    processes: list[asyncio.subprocess.Process] = []
    started: list[tuple[str, Path]] = []
    base = {
        **os.environ,
        "SCOREGATE_REGISTRY": str(registry_file),
        "SCOREGATE_DATABASE_URL": settings.writeback.database_url,
        "SCOREGATE_KAFKA_BOOTSTRAP": settings.writeback.kafka_bootstrap,
        "SCOREGATE_TOPIC": settings.writeback.topic,
        "SCOREGATE_ALERTS_TOPIC": alerts_topic,
        "SCOREGATE_FRESHNESS_RESOLUTION_S": "1",
        "SCOREGATE_ALERT_INTERVAL_S": "1",
        "SCOREGATE_REDIS_URL": settings.redis_url,
        "SCOREGATE_REDIS_PREFIX": settings.redis_prefix,
        "SCOREGATE_API_KEYS": ",".join(key.line() for key in API_KEYS),
        "SCOREGATE_PII_KEY": "test-pii-key",
        "SCOREGATE_RELAY_POLL_INTERVAL_MS": "100",
        "SCOREGATE_MAINTENANCE_INTERVAL_S": "0",
        "SCOREGATE_RECONCILE_INTERVAL_S": "0",
    }
    try:
        for n in range(2):
            port = free_port()
            log = tmp_path / f"gateway-{n}.log"
            with log.open("ab") as out:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "serve",
                    "--port",
                    str(port),
                    env=base,
                    stdout=out,
                    stderr=out,
                )
            processes.append(process)
            started.append((f"http://127.0.0.1:{port}", log))
        for url, log in started:
            await _wait_live(url, log)
        yield started
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            try:
                async with asyncio.timeout(20):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait_live(url: str, log: Path) -> None:
    port = int(url.rsplit(":", 1)[1])
    await wait_for_port("127.0.0.1", port, limit_s=30)
    async with httpx.AsyncClient() as http, asyncio.timeout(30):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{url}/health/live")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(log.read_text())


async def stored(settings: GatewaySettings) -> None:
    """Wait until the online store holds a value of the feature for c-1."""
    store = OnlineStore.from_url(settings.redis_url, settings.redis_prefix, OnlineStoreSpec(), 2)
    try:
        async with asyncio.timeout(30):
            while True:
                [found] = await store.read([("customer", "c-1", [FEATURE])], Deadline(5))
                if found.get(FEATURE) is not None:
                    return
                await asyncio.sleep(0.05)
    finally:
        await store.close()


async def feed(bootstrap: str, topic: str, stop: asyncio.Event) -> None:
    """The upstream: a new value of the feature for c-1 every 200 ms, timed now."""
    n = 0
    while not stop.is_set():
        n += 1
        record = feature_update("customer_id", "c-1", {FEATURE: n}, datetime.now(UTC))
        await produce(bootstrap, topic, [record])
        await asyncio.sleep(0.2)


async def test_an_alert_fires_once_when_ingest_stops_and_clears_once_when_it_resumes(
    settings: GatewaySettings,
    registry_file: Path,
    stream_topic: str,
    broker: LocalBroker,
    consumer: Alerts,
    gateways: list[tuple[str, Path]],
) -> None:
    ingest = IngestSettings(
        registry_path=registry_file,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        kafka=settings.writeback,
        group_id=f"ingest-{stream_topic}",
        batch_size=100,
        poll_timeout_ms=50,
    )
    await create_topic(broker.bootstrap, stream_topic)
    stopping = asyncio.Event()
    feeder = asyncio.create_task(feed(broker.bootstrap, stream_topic, stopping))
    load = Load([url for url, _ in gateways])
    loading: asyncio.Task[None] | None = None
    try:
        async with running(ingest):
            # No serve before the first value is stored: it would be out of the SLA.
            await stored(settings)
            # Serve fresh values until both windows hold only serves within the SLA.
            loading = asyncio.create_task(load.run(stopping))
            async with asyncio.timeout(30):
                while load.first(True, after=0) is None:
                    await asyncio.sleep(0.05)
            good_from = load.first(True, after=0) or 0.0
            while time.time() < good_from + LONG_S / 2:
                await asyncio.sleep(0.1)
            assert consumer.records == []
        ingest_stopped = time.time()

        breached_seen = await consumer.until(FRESHNESS_BREACHED)
        first_out = load.first(False, after=ingest_stopped)
        assert first_out is not None

        async with running(ingest):
            ingest_resumed = time.time()
            recovered_seen = await consumer.until(FRESHNESS_RECOVERED)
            first_back = load.first(True, after=ingest_resumed)
            # A few more evaluations by both processes: nothing else is raised.
            await asyncio.sleep(4)
    finally:
        stopping.set()
        await feeder
        if loading is not None:
            await loading

    assert load.failures == []
    ours = [
        (at, record)
        for at, record in consumer.records
        if dict(record.headers)["ce_subject"] == FEATURE.encode()
    ]
    kinds = [dict(record.headers)["ce_type"].decode() for _, record in ours]
    assert kinds == [FRESHNESS_BREACHED, FRESHNESS_RECOVERED]
    ids = [dict(record.headers)["ce_id"] for _, record in consumer.records]
    assert len(ids) == len(set(ids))
    others = {dict(record.headers)["ce_subject"] for _, record in consumer.records} - {
        FEATURE.encode()
    }
    assert others == set()

    breached = decoder.decode(ours[0][1].value)
    recovered = decoder.decode(ours[1][1].value)
    assert isinstance(breached, FreshnessBreached)
    assert isinstance(recovered, FreshnessRecovered)
    for (_, record), event in zip(ours, (breached, recovered), strict=True):
        headers = dict(record.headers)
        assert record.key == FEATURE.encode()
        assert headers["ce_source"] == b"/scoregate"
        assert (event.feature, event.alert, event.owner) == (FEATURE, "fast", "payments-analytics")
        assert (event.sla_ms, event.burn_rate_threshold) == (SLA_MS, THRESHOLD)
        assert (event.objective.target, event.objective.period_days) == (TARGET, 1)
        assert [(w.window, w.seconds) for w in event.windows] == [
            ("long", LONG_S),
            ("short", SHORT_S),
        ]
        assert datetime.fromisoformat(headers["ce_time"].decode()) == event.since
    long, short = breached.windows
    assert long.burn_rate is not None and long.burn_rate >= THRESHOLD
    assert short.burn_rate is not None and short.burn_rate >= THRESHOLD
    assert long.served > 0 and short.served > 0
    assert min(w.burn_rate or 0.0 for w in recovered.windows) < THRESHOLD
    assert recovered.breached_since == breached.since
    assert breached.since < recovered.since

    # One WARNING for the breach and one INFO for the recovery, across both processes.
    logs = "".join(log.read_text() for _, log in gateways)
    assert logs.count("freshness breached: feature txn_count_30m") == 1, logs[-4000:]
    assert logs.count("freshness recovered: feature txn_count_30m") == 1, logs[-4000:]
    # Both processes evaluated: the one that does not hold the lock reports the state too.
    async with httpx.AsyncClient(headers=bearer("auditor")) as http:
        pages = [(await http.get(f"{url}/freshness/alerts")).json() for url, _ in gateways]
        metrics = [(await http.get(f"{url}/metrics")).text for url, _ in gateways]
    for page in pages:
        [state] = [a for a in page["alerts"] if a["feature"] == FEATURE]
        assert (state["firing"], state["alert"]) == (False, "fast")
        assert [c["event_type"] for c in page["changes"] if c["feature"] == FEATURE] == [
            FRESHNESS_RECOVERED,
            FRESHNESS_BREACHED,
        ]
    async with httpx.AsyncClient(cookies={COOKIE: KEYS["auditor"]}) as browser:
        page = await browser.get(f"{gateways[0][0]}/ui/freshness", params={"feature": FEATURE})
    assert page.status_code == 200, page.text[:2000]
    block = page.text[page.text.index("Burn-rate alerts") :]
    row = block[block.index('<tr class="alert-fast">') :]
    row = row[: row.index("</tr>")]
    assert "alert-state closed" in row and ">ok<" in row
    assert "over 20 s" in row and "over 5 s" in row
    for text in metrics:
        assert f'scoregate_freshness_alert_firing{{alert="fast",feature="{FEATURE}"}} 0.0' in text

    breach_start = ingest_stopped + SLA_MS / 1000
    figures = {
        "windows_s": {"long": LONG_S, "short": SHORT_S},
        "threshold": THRESHOLD,
        "target": TARGET,
        "sla_ms": SLA_MS,
        "evaluation_interval_s": 1,
        "resolution_s": 1,
        "answers": load.answers,
        "breach_start_to_breached_seen_s": round(breached_seen - breach_start, 2),
        "first_out_of_sla_answer_to_breached_seen_s": round(breached_seen - first_out, 2),
        "ingest_resumed_to_recovered_seen_s": round(recovered_seen - ingest_resumed, 2),
        "first_answer_back_in_sla_to_recovered_seen_s": (
            None if first_back is None else round(recovered_seen - first_back, 2)
        ),
        "breached_rates": {"long": long.burn_rate, "short": short.burn_rate},
        "recovered_rates": {w.window: w.burn_rate for w in recovered.windows},
    }
    print("ALERT-FIGURES " + json.dumps(figures))
