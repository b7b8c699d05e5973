"""The sample operational system of ``scoregate dev``: what it sends decodes against the
sample registry, and the ingest worker turns it into the state the sample holds."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

import pytest

from gateway.deadline import Deadline
from gateway.features.online_store import OnlineStore
from gateway.ingest.decoding import StreamDecoder
from gateway.ingest.records import RawRecord
from gateway.ingest.worker import IngestSettings
from gateway.registry import Registry, load_registry
from scoregate_dev.broker import LocalBroker
from scoregate_dev.operational import (
    OperationalSystem,
    Record,
    SampleEvents,
    create_topics,
    load_for_streams,
    until_ingested,
)
from scoregate_dev.stack import SAMPLE_REGISTRY
from tests.support.ingest import running

CUSTOMERS = [f"c-{i}" for i in range(1, 31)]
MERCHANTS = [f"m-{i}" for i in range(1, 11)]
CUSTOMER_FEATURES = (
    "txn_count_30m",
    "txn_amount_sum_24h",
    "distinct_merchants_7d",
    "account_age_days",
    "kyc_level",
    "country_risk",
)
UNMAPPED_COLUMNS = {"name", "category", "category_risk", "updated_at"}


class Ticking:
    """A clock that moves on 7 ms at every reading, so events have their own times."""

    def __init__(self, start: float = 1_796_000_000.0) -> None:
        self._now = start

    def __call__(self) -> float:
        self._now += 0.007
        return self._now


def sample_events(registry: Registry, *, with_schema: bool, seed: int = 3) -> SampleEvents:
    return SampleEvents(
        registry,
        CUSTOMERS,
        MERCHANTS,
        seed=seed,
        with_schema=with_schema,
        cdc_share=0.5,
        delete_share=0.3,
        clock=Ticking(),
    )


def latest_by_feature(
    registry: Registry, records: list[Record]
) -> tuple[dict[tuple[str, str, str], Any], Counter[str]]:
    """Decode ``records`` in order as the worker would, keeping the newest value of each
    feature by (event time, sequence); None where the newest change deleted it."""
    decoders = {s.topic: StreamDecoder(s, registry) for s in registry.file.streams}
    offsets: Counter[str] = Counter()
    ops: Counter[str] = Counter()
    newest: dict[tuple[str, str, str], tuple[tuple[int, int], Any]] = {}
    for record in records:
        raw = RawRecord(
            topic=record.topic,
            partition=0,
            offset=offsets[record.topic],
            key=record.key,
            value=record.value,
            headers=record.headers,
            timestamp_ms=0,
        )
        offsets[record.topic] += 1
        decoded = decoders[record.topic].decode(raw)
        assert set(decoded.extra_fields) <= UNMAPPED_COLUMNS
        ops[_op(record)] += 1
        for change in decoded.changes:
            order = (change.event_time_ms, change.sequence)
            updates = {**change.values, **dict.fromkeys(change.deleted)}
            for feature, value in updates.items():
                key = (change.entity, change.entity_id, feature)
                if key not in newest or newest[key][0] < order:
                    newest[key] = (order, value)
    return {key: value for key, (_, value) in newest.items()}, ops


def _op(record: Record) -> str:
    if record.value is None:
        return "tombstone"
    if not record.topic.startswith("riskdb."):
        return "update"
    value = json.loads(record.value)
    return str(value.get("payload", value)["op"])


def expected_state(events: SampleEvents) -> dict[tuple[str, str, str], Any]:
    """What the sample's own state says each feature now is (None for a deleted row)."""
    state: dict[tuple[str, str, str], Any] = {}
    for customer, c in events.customers.items():
        values = (c.txn_count, c.amount_sum, c.merchants, c.age_days, c.kyc, c.country_risk)
        for feature, value in zip(CUSTOMER_FEATURES, values, strict=True):
            state[("customer", customer, feature)] = value
    for merchant, m in events.merchants.items():
        rate = None if m.deleted else m.chargeback_rate
        state[("merchant", merchant, "chargeback_rate_90d")] = rate
    return state


@pytest.mark.parametrize("with_schema", [False, True], ids=["payload", "schema-envelope"])
def test_every_record_decodes_and_carries_the_systems_state(with_schema: bool) -> None:
    registry = load_for_streams(SAMPLE_REGISTRY)
    events = sample_events(registry, with_schema=with_schema)
    records = events.snapshot() + list(
        itertools.chain.from_iterable(events.step() for _ in range(600))
    )

    latest, ops = latest_by_feature(registry, records)

    assert {"update", "r", "u", "d", "c", "tombstone"} <= set(ops)
    assert ops["r"] == len(MERCHANTS)
    assert ops["d"] == ops["tombstone"]
    assert latest == expected_state(events)


def test_the_snapshot_reads_every_row_in_one_transaction() -> None:
    registry = load_for_streams(SAMPLE_REGISTRY)
    events = sample_events(registry, with_schema=False)
    rows = [json.loads(r.value) for r in events.snapshot() if r.topic.startswith("riskdb.")]

    assert [row["op"] for row in rows] == ["r"] * len(MERCHANTS)
    assert {row["source"]["lsn"] for row in rows} == {rows[0]["source"]["lsn"]}
    assert {row["source"]["txId"] for row in rows} == {rows[0]["source"]["txId"]}
    markers = [row["source"]["snapshot"] for row in rows]
    assert (markers[0], markers[-1], set(markers[1:-1])) == ("first", "last", {"true"})


@pytest.mark.services
async def test_the_worker_keeps_the_store_at_the_systems_state(
    ingest_settings: IngestSettings, broker: LocalBroker, online: OnlineStore
) -> None:
    registry = load_registry(ingest_settings.registry_path)
    system = OperationalSystem(broker.bootstrap, registry, CUSTOMERS, MERCHANTS, rate=0)
    system.events = sample_events(registry, with_schema=True, seed=5)
    await create_topics(broker.bootstrap, system.events.topics, partitions=2)
    ops: Counter[str] = Counter()
    async with running(ingest_settings):
        await system.start()
        try:
            for _ in range(300):
                records = system.events.step()
                ops.update(_op(record) for record in records)
                await system.send(records)
        finally:
            await system.stop()
        await until_ingested(broker.bootstrap, ingest_settings.group_id, system.positions, 60)

    wanted = expected_state(system.events)
    asks = [("customer", c, list(CUSTOMER_FEATURES)) for c in CUSTOMERS]
    asks += [("merchant", m, ["chargeback_rate_90d"]) for m in MERCHANTS]
    found = await online.read(asks, Deadline(5))
    stored = {
        (entity, entity_id, feature): (values[feature].value if feature in values else None)
        for (entity, entity_id, features), values in zip(asks, found, strict=True)
        for feature in features
    }
    assert system.failed == 0
    assert {"update", "u", "d", "c", "tombstone"} <= set(ops)
    assert stored == wanted
