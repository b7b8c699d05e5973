"""Feature assembly without services: statuses, staleness, policies, degraded, problems.

The online store and the sources are stand-ins of their interfaces (``read``/``write``
and ``fetch``) holding values in memory, so every path of the assembler's decision
(fresh, fetched, stale, default, fail) is reached on purpose and checked exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY as METRICS

from gateway.breaker import BreakerOpen
from gateway.deadline import Deadline, DeadlineReached
from gateway.errors import DeadlineExceeded
from gateway.features.assembler import FeatureAssembler, FeatureUnavailable
from gateway.features.online_store import (
    StoredValue,
    StoreUnavailable,
    lineage_id_for,
    to_millis,
)
from gateway.features.sources import SourceError, SourceRecord
from gateway.registry import Registry, parse_registry

REGISTRY = b"""
[[entities]]
name = "customer"
key = "customer_id"

[[entities]]
name = "merchant"
key = "merchant_id"

[[sources]]
name = "profile"
url = "http://profile.invalid"
owner = "t"

[[sources]]
name = "risk"
url = "http://risk.invalid"
owner = "t"

[[features]]
name = "kyc_level"
entity = "customer"
dtype = "int64"
max_staleness_ms = 60000
source = "profile"
path = "/customers/{customer_id}/profile"
on_unavailable = "serve_stale"
default = 0

[[features]]
name = "segment"
entity = "customer"
dtype = "string"
max_staleness_ms = 60000
source = "profile"
path = "/customers/{customer_id}/profile"
field = "seg"
on_unavailable = "default"
default = "unknown"
schema_version = 3

[[features]]
name = "txn_count"
entity = "customer"
dtype = "float64"
max_staleness_ms = 1000
on_unavailable = "serve_stale"
default = 0

[[features]]
name = "merchant_risk"
entity = "merchant"
dtype = "float64"
max_staleness_ms = 5000
source = "risk"
path = "/merchants/{merchant_id}/risk"
# Policy "fail" serves no default, even one that is declared.
default = 0.0

[[models]]
name = "m"
version = "1"
subject = "customer"
endpoint = "http://model.invalid"
features = ["kyc_level", "segment", "txn_count", "merchant_risk"]
context = [{ name = "amount", dtype = "float64" }]
input = { layout = "columns" }

[[models]]
name = "sourced"
version = "1"
subject = "customer"
endpoint = "http://model.invalid"
features = ["kyc_level", "merchant_risk"]
"""

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_MS = to_millis(NOW)
IDS = {"customer": "c-1", "merchant": "m-1"}
CONTEXT = {"amount": 12.5}


class _Breaker:
    def __init__(self) -> None:
        self.state = "closed"


class FakeStore:
    """The online store's interface over a dict of (entity, id) -> {feature: value}."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, StoredValue]] = {}
        self.reads: list[list[tuple[str, str, list[str]]]] = []
        self.writes: list[tuple[str, str, int, dict[str, StoredValue]]] = []
        self.down: Exception | None = None
        self.write_gate: asyncio.Event | None = None
        self.write_error: Exception | None = None
        self.breaker = _Breaker()

    async def read(
        self, reads: Sequence[tuple[str, str, Sequence[str]]], deadline: Deadline
    ) -> list[dict[str, StoredValue]]:
        self.reads.append([(e, i, list(names)) for e, i, names in reads])
        if self.down is not None:
            raise self.down
        return [
            {n: v for n, v in self.rows.get((e, i), {}).items() if n in names}
            for e, i, names in reads
        ]

    async def write(
        self, entity: str, entity_id: str, event_time_ms: int, values: Mapping[str, StoredValue]
    ) -> list[str]:
        if self.write_gate is not None:
            await self.write_gate.wait()
        self.writes.append((entity, entity_id, event_time_ms, dict(values)))
        if self.write_error is not None:
            raise self.write_error
        return list(values)


class FakeSource:
    """A source's ``fetch``: answers per path from a dict, or raises what it holds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.answers: dict[str, dict[str, Any] | BaseException] = {}
        self.paths: list[str] = []

    async def fetch(self, path: str, deadline: Deadline) -> SourceRecord:
        self.paths.append(path)
        answer = self.answers.get(path, SourceError(self.name, "no such record"))
        if isinstance(answer, BaseException):
            raise answer
        return SourceRecord(
            body=answer,
            url=f"http://{self.name}.invalid{path}",
            event_time=NOW - timedelta(seconds=2),
            fetched_at=NOW,
            ref=f"{self.name}:{path}",
        )


def stored(value: object, age_ms: int, ref: str = "r:1") -> StoredValue:
    event_time_ms = NOW_MS - age_ms
    return StoredValue(
        value=value,  # type: ignore[arg-type]
        event_time_ms=event_time_ms,
        ingested_at_ms=event_time_ms + 5,
        lineage_id=lineage_id_for("cdc", ref, event_time_ms),
        kind="push",
        source_system="cdc",
        source_ref=ref,
        schema_version=1,
        transform=None,
    )


@pytest.fixture
def registry() -> Registry:
    return parse_registry(REGISTRY)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def sources() -> dict[str, FakeSource]:
    return {"profile": FakeSource("profile"), "risk": FakeSource("risk")}


@pytest.fixture
def assembler(
    registry: Registry, store: FakeStore, sources: dict[str, FakeSource]
) -> FeatureAssembler:
    return FeatureAssembler(registry, store, sources)  # type: ignore[arg-type]


def all_fresh(store: FakeStore) -> None:
    store.rows[("customer", "c-1")] = {
        "kyc_level": stored(2, 100),
        "segment": stored("gold", 100),
        "txn_count": stored(7.0, 100),
    }
    store.rows[("merchant", "m-1")] = {"merchant_risk": stored(0.25, 100)}


async def assemble(assembler: FeatureAssembler, registry: Registry, ids: Any = None) -> Any:
    return await assembler.assemble(registry.plans["m"], ids or IDS, CONTEXT, Deadline(5.0), NOW)


async def test_values_within_their_sla_are_fresh_from_the_store_and_no_source_is_called(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    all_fresh(store)
    assembly = await assemble(assembler, registry)
    assert [(n, v.status, v.source) for n, v in assembly.values.items()] == [
        ("kyc_level", "fresh", "online_store"),
        ("segment", "fresh", "online_store"),
        ("txn_count", "fresh", "online_store"),
        ("merchant_risk", "fresh", "online_store"),
        ("amount", "request", "request"),
    ]
    kyc = assembly.values["kyc_level"]
    assert (kyc.value, kyc.staleness_ms, kyc.max_staleness_ms) == (2, 100, 60000)
    assert kyc.event_time == NOW - timedelta(milliseconds=100)
    assert kyc.lineage_id == store.rows[("customer", "c-1")]["kyc_level"].lineage_id
    assert assembly.values["amount"].value == 12.5
    assert not assembly.degraded
    assert assembly.problems == {}
    # Context values have no lineage; every stored value has its own, named for its entity.
    assert list(assembly.lineage) == ["kyc_level", "segment", "txn_count", "merchant_risk"]
    assert assembly.lineage["merchant_risk"].entity_id == "m-1"
    assert assembly.lineage["kyc_level"].kind == "push"
    assert sources["profile"].paths == sources["risk"].paths == []
    # One read for all entities, each with only the features it holds.
    assert store.reads == [
        [
            ("customer", "c-1", ["kyc_level", "segment", "txn_count"]),
            ("merchant", "m-1", ["merchant_risk"]),
        ]
    ]


async def test_staleness_is_measured_against_max_staleness_ms_inclusive(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    all_fresh(store)
    store.rows[("customer", "c-1")]["txn_count"] = stored(7.0, 1000)  # exactly at its SLA
    store.rows[("merchant", "m-1")]["merchant_risk"] = stored(0.25, 5001)  # 1 ms beyond
    sources["risk"].answers["/merchants/m-1/risk"] = {"merchant_risk": 0.5}
    assembly = await assemble(assembler, registry)
    assert assembly.values["txn_count"].status == "fresh"
    assert assembly.values["txn_count"].staleness_ms == 1000
    risk = assembly.values["merchant_risk"]
    assert (risk.status, risk.source, risk.value) == ("fallback", "source:risk", 0.5)
    assert sources["risk"].paths == ["/merchants/m-1/risk"]
    assert not assembly.degraded


async def test_missing_values_come_from_one_call_per_record_and_are_written_back(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    all_fresh(store)
    del store.rows[("customer", "c-1")]["kyc_level"]
    del store.rows[("customer", "c-1")]["segment"]
    sources["profile"].answers["/customers/c-1/profile"] = {"kyc_level": 3, "seg": "silver"}
    assembly = await assemble(assembler, registry)
    await assembler.drain()
    # Both features live at one path: one call serves them.
    assert sources["profile"].paths == ["/customers/c-1/profile"]
    segment = assembly.values["segment"]
    assert (segment.status, segment.source, segment.value) == (
        "fallback",
        "source:profile",
        "silver",
    )
    assert segment.staleness_ms == 2000
    assert segment.schema_version == 3
    assert assembly.lineage["segment"].kind == "fallback"
    assert assembly.lineage["segment"].source_ref == "profile:/customers/c-1/profile"
    assert assembly.values["kyc_level"].lineage_id == segment.lineage_id
    assert not assembly.degraded
    assert assembly.problems == {}
    [(entity, entity_id, event_time_ms, values)] = store.writes
    assert (entity, entity_id, event_time_ms) == ("customer", "c-1", NOW_MS - 2000)
    assert {name: v.value for name, v in values.items()} == {"kyc_level": 3, "segment": "silver"}
    assert {v.kind for v in values.values()} == {"fallback"}


async def test_a_fetched_integer_is_served_as_the_declared_float(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    all_fresh(store)
    del store.rows[("merchant", "m-1")]["merchant_risk"]
    sources["risk"].answers["/merchants/m-1/risk"] = {"merchant_risk": 1}
    value = (await assemble(assembler, registry)).values["merchant_risk"].value
    assert value == 1.0
    assert isinstance(value, float)


async def test_ids_are_percent_encoded_into_the_source_path(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    sources["profile"].answers["/customers/a%2Fb%3Fx/profile"] = {"kyc_level": 1, "seg": "s"}
    sources["risk"].answers["/merchants/%2E%2E/risk"] = {"merchant_risk": 0.1}
    store.rows[("customer", "a/b?x")] = {"txn_count": stored(1.0, 0)}
    assembly = await assemble(assembler, registry, {"customer": "a/b?x", "merchant": ".."})
    assert sources["profile"].paths == ["/customers/a%2Fb%3Fx/profile"]
    assert sources["risk"].paths == ["/merchants/%2E%2E/risk"]
    assert assembly.lineage["kyc_level"].entity_id == "a/b?x"


async def test_a_failed_source_serves_the_stale_value_and_degrades(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    all_fresh(store)
    store.rows[("customer", "c-1")]["kyc_level"] = stored(2, 90_000)
    sources["profile"].answers["/customers/c-1/profile"] = SourceError("profile", "answered 500")
    assembly = await assemble(assembler, registry)
    kyc = assembly.values["kyc_level"]
    assert (kyc.status, kyc.source, kyc.value, kyc.staleness_ms) == (
        "stale",
        "online_store",
        2,
        90_000,
    )
    assert assembly.lineage["kyc_level"].source_ref == "r:1"
    assert assembly.degraded
    assert assembly.problems == {"kyc_level": "source profile: answered 500"}
    # Fresh from the store, segment never needed the source.
    assert assembly.values["segment"].status == "fresh"
    assert store.writes == []


async def test_without_a_stored_value_serve_stale_falls_back_to_the_default(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    all_fresh(store)
    del store.rows[("customer", "c-1")]["kyc_level"]
    store.rows[("customer", "c-1")]["segment"] = stored("gold", 60_001)
    sources["profile"].answers["/customers/c-1/profile"] = TimeoutError()
    assembly = await assemble(assembler, registry)
    kyc = assembly.values["kyc_level"]
    assert (kyc.status, kyc.source, kyc.value) == ("default", "default", 0)
    assert (kyc.staleness_ms, kyc.lineage_id, kyc.max_staleness_ms) == (None, None, 60000)
    # Policy "default" serves the default even though a stale value is stored.
    segment = assembly.values["segment"]
    assert (segment.status, segment.value, segment.schema_version) == ("default", "unknown", 3)
    assert "kyc_level" not in assembly.lineage
    assert "segment" not in assembly.lineage
    assert assembly.degraded
    reason = "source profile: no answer before the request deadline"
    assert assembly.problems == {"kyc_level": reason, "segment": reason}


async def test_policy_fail_raises_naming_the_feature_and_the_reason(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    all_fresh(store)
    store.rows[("merchant", "m-1")]["merchant_risk"] = stored(0.25, 10_000)
    sources["risk"].answers["/merchants/m-1/risk"] = ConnectionResetError("peer reset")
    with pytest.raises(FeatureUnavailable) as caught:
        await assemble(assembler, registry)
    assert caught.value.status_code == 503
    assert caught.value.field == "features.merchant_risk"
    reason = "source risk: ConnectionResetError: peer reset"
    assert caught.value.extra == {"feature": "merchant_risk", "reason": reason}
    assert "'fail'" in caught.value.detail


async def test_an_open_source_breaker_is_the_reason_given(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    all_fresh(store)
    del store.rows[("customer", "c-1")]["kyc_level"]
    opened = BreakerOpen("source:profile", 3.0)
    sources["profile"].answers["/customers/c-1/profile"] = opened
    assembly = await assemble(assembler, registry)
    assert assembly.problems == {"kyc_level": str(opened)}
    assert assembly.values["kyc_level"].status == "default"


async def test_a_feature_without_a_source_is_stale_or_default_by_its_policy(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
) -> None:
    all_fresh(store)
    store.rows[("customer", "c-1")]["txn_count"] = stored(7.0, 1001)
    assembly = await assemble(assembler, registry)
    assert assembly.values["txn_count"].status == "stale"
    assert assembly.problems == {"txn_count": "stale, no source"}
    assert assembly.degraded

    del store.rows[("customer", "c-1")]["txn_count"]
    assembly = await assemble(assembler, registry)
    txn = assembly.values["txn_count"]
    assert (txn.status, txn.value) == ("default", 0.0)
    assert isinstance(txn.value, float)
    assert assembly.problems == {"txn_count": "not in the online store"}


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        ({"kyc_level": 3}, "'seg'"),
        ({"kyc_level": "3", "seg": "s"}, "expected int64, got str"),
        ({"kyc_level": True, "seg": "s"}, "expected int64, got bool"),
    ],
)
async def test_a_record_without_a_valid_field_applies_that_features_policy(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
    body: dict[str, Any],
    missing: str,
) -> None:
    all_fresh(store)
    del store.rows[("customer", "c-1")]["kyc_level"]
    del store.rows[("customer", "c-1")]["segment"]
    sources["profile"].answers["/customers/c-1/profile"] = body
    changes_before = _source_schema_changes()
    assembly = await assemble(assembler, registry)
    await assembler.drain()
    # The answer broke the source's declared contract: counted as a schema change.
    assert _source_schema_changes() == changes_before + 1
    [name] = assembly.problems
    assert assembly.values[name].status == "default"
    assert assembly.problems[name].startswith(f"source:profile answered without a valid {name}")
    assert missing in assembly.problems[name]
    assert assembly.degraded
    # The valid one of the two is served from the source and written back alone.
    [other] = {"kyc_level", "segment"} - {name}
    assert assembly.values[other].status == "fallback"
    assert [set(values) for *_, values in store.writes] == [{other}]


async def test_a_store_outage_sends_every_feature_to_its_source_and_degrades(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    all_fresh(store)
    store.down = StoreUnavailable("no answer within the read timeout")
    store.breaker.state = "open"
    sources["profile"].answers["/customers/c-1/profile"] = {"kyc_level": 4, "seg": "s"}
    sources["risk"].answers["/merchants/m-1/risk"] = {"merchant_risk": 0.9}
    assembly = await assemble(assembler, registry)
    await assembler.drain()
    statuses = {n: v.status for n, v in assembly.values.items()}
    assert statuses == {
        "kyc_level": "fallback",
        "segment": "fallback",
        "txn_count": "default",
        "merchant_risk": "fallback",
        "amount": "request",
    }
    assert assembly.degraded
    assert assembly.problems == {"txn_count": "not in the online store"}
    # With the store's breaker open, nothing is written back to it.
    assert store.writes == []


async def test_requests_sharing_a_record_write_it_back_once(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    all_fresh(store)
    del store.rows[("customer", "c-1")]["kyc_level"]
    sources["profile"].answers["/customers/c-1/profile"] = {"kyc_level": 3, "seg": "x"}
    store.write_gate = asyncio.Event()
    first = await assemble(assembler, registry)
    second = await assemble(assembler, registry)
    assert first.values["kyc_level"].lineage_id == second.values["kyc_level"].lineage_id
    store.write_gate.set()
    await assembler.drain()
    assert len(store.writes) == 1
    # Once that write is done, a later fetch of the record writes again.
    await assemble(assembler, registry)
    await assembler.drain()
    assert len(store.writes) == 2


async def test_a_failed_write_back_does_not_fail_the_request(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
    caplog: pytest.LogCaptureFixture,
) -> None:
    all_fresh(store)
    del store.rows[("customer", "c-1")]["kyc_level"]
    sources["profile"].answers["/customers/c-1/profile"] = {"kyc_level": 3, "seg": "x"}
    store.write_error = StoreUnavailable("redis went away")
    assembly = await assemble(assembler, registry)
    await assembler.drain()
    assert assembly.values["kyc_level"].status == "fallback"
    assert len(store.writes) == 1
    assert "read-through write to the online store failed: redis went away" in caplog.text


async def test_a_store_outage_alone_degrades_even_when_every_source_answers(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    store.down = StoreUnavailable("no answer within the read timeout")
    sources["profile"].answers["/customers/c-1/profile"] = {"kyc_level": 4}
    sources["risk"].answers["/merchants/m-1/risk"] = {"merchant_risk": 0.9}
    assembly = await assembler.assemble(registry.plans["sourced"], IDS, {}, Deadline(5.0), NOW)
    await assembler.drain()
    assert {n: v.status for n, v in assembly.values.items()} == {
        "kyc_level": "fallback",
        "merchant_risk": "fallback",
    }
    assert assembly.problems == {}
    assert assembly.degraded


def _source_schema_changes() -> float:
    return sum(
        sample.value
        for metric in METRICS.collect()
        if metric.name == "scoregate_schema_changes"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("source") == "source:profile"
    )


async def test_policy_fail_past_the_request_deadline_is_the_deadline_not_the_source(
    assembler: FeatureAssembler,
    registry: Registry,
    store: FakeStore,
    sources: dict[str, FakeSource],
) -> None:
    all_fresh(store)
    store.rows[("merchant", "m-1")]["merchant_risk"] = stored(0.25, 10_000)
    sources["risk"].answers["/merchants/m-1/risk"] = DeadlineReached("the request's deadline")
    with pytest.raises(DeadlineExceeded) as caught:
        await assemble(assembler, registry)
    assert caught.value.status_code == 504
    assert caught.value.field == "features.merchant_risk"
