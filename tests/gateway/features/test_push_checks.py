"""Pushed feature values: the checks before the store, and what is handed to it.

The store is a stand-in of ``OnlineStore.write`` that keeps what it is given, so a
bad push is seen to reach nothing and a good one to arrive exactly as stored values.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.features import PushLineage, PushRequest
from gateway.errors import BadRequest, Unavailable
from gateway.features.online_store import StoredValue, StoreUnavailable, to_millis
from gateway.features.push import FeaturePusher
from gateway.registry import parse_registry

REGISTRY = b"""
[[entities]]
name = "customer"
key = "customer_id"
pattern = "^c-[0-9]+$"

[[entities]]
name = "merchant"
key = "merchant_id"

[[features]]
name = "txn_count"
entity = "customer"
dtype = "float64"
max_staleness_ms = 1000
schema_version = 4

[[features]]
name = "tier"
entity = "customer"
dtype = "string"
max_staleness_ms = 1000

[[features]]
name = "merchant_risk"
entity = "merchant"
dtype = "float64"
max_staleness_ms = 1000
"""

EVENT_TIME = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


class FakeStore:
    """``OnlineStore.write``: keeps each write; ``older`` fields are skipped as newer-held."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, int, dict[str, StoredValue]]] = []
        self.older: set[str] = set()
        self.down = False

    async def write(
        self,
        entity: str,
        entity_id: str,
        event_time_ms: int,
        values: Mapping[str, StoredValue],
        sequence: int = 0,
    ) -> list[str]:
        if self.down:
            raise StoreUnavailable("redis is down")
        self.writes.append((entity, entity_id, event_time_ms, dict(values)))
        return [name for name in values if name not in self.older]


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def pusher(store: FakeStore) -> FeaturePusher:
    return FeaturePusher(parse_registry(REGISTRY), store)  # type: ignore[arg-type]


def push(**changes: Any) -> PushRequest:
    fields: dict[str, Any] = {
        "entities": {"customer_id": "c-1"},
        "features": {"txn_count": 3, "tier": "gold"},
        "event_time": EVENT_TIME,
        "lineage": PushLineage(source_system="cdc", source_ref="orders:1"),
    }
    fields.update(changes)
    return PushRequest(**fields)


async def test_values_are_coerced_and_written_with_the_push_lineage(
    pusher: FeaturePusher, store: FakeStore
) -> None:
    response = await pusher.push(push())
    [(entity, entity_id, event_time_ms, values)] = store.writes
    assert (entity, entity_id, event_time_ms) == ("customer", "c-1", to_millis(EVENT_TIME))
    assert set(values) == {"txn_count", "tier"}
    txn = values["txn_count"]
    assert txn.value == 3.0
    assert isinstance(txn.value, float)
    assert (txn.kind, txn.source_system, txn.source_ref, txn.transform) == (
        "push",
        "cdc",
        "orders:1",
        None,
    )
    # Without a schema version in the lineage, each feature's declared one is kept.
    assert (values["txn_count"].schema_version, values["tier"].schema_version) == (4, 1)
    assert values["tier"].lineage_id == txn.lineage_id == response.lineage_id
    assert response.written == ["txn_count", "tier"]
    assert response.skipped_older == []


async def test_the_lineage_id_names_the_push_and_a_stated_schema_version_wins(
    pusher: FeaturePusher, store: FakeStore
) -> None:
    first = await pusher.push(push())
    again = await pusher.push(push())
    assert first.lineage_id == again.lineage_id
    lineage = PushLineage(source_system="cdc", source_ref="orders:1", schema_version=9)
    versioned = await pusher.push(push(lineage=lineage))
    assert versioned.lineage_id != first.lineage_id
    assert {v.schema_version for v in store.writes[-1][3].values()} == {9}
    later = await pusher.push(push(event_time=EVENT_TIME + timedelta(seconds=1)))
    assert later.lineage_id != first.lineage_id


async def test_fields_the_store_holds_newer_values_of_are_reported_skipped(
    pusher: FeaturePusher, store: FakeStore
) -> None:
    store.older = {"tier"}
    response = await pusher.push(push())
    assert (response.written, response.skipped_older) == (["txn_count"], ["tier"])


async def test_a_store_outage_is_a_503_naming_the_store(
    pusher: FeaturePusher, store: FakeStore
) -> None:
    store.down = True
    with pytest.raises(Unavailable) as caught:
        await pusher.push(push())
    assert caught.value.field == "online_store"


@pytest.mark.parametrize(
    ("changes", "field", "detail"),
    [
        (
            {"entities": {"customer_id": "c-1", "merchant_id": "m"}},
            "entities",
            "exactly one entity",
        ),
        ({"entities": {"shop_id": "s"}}, "entities.shop_id", "unknown entity key"),
        ({"entities": {"customer_id": "x-1"}}, "entities.customer_id", "must match"),
        ({"features": {"txn_count": 1, "nope": 1}}, "features.nope", "unknown feature"),
        (
            {"features": {"merchant_risk": 0.1}},
            "features.merchant_risk",
            "belongs to entity 'merchant', not 'customer'",
        ),
        ({"features": {"txn_count": "3"}}, "features.txn_count", "expected float64, got str"),
        ({"features": {"tier": "a\x00b"}}, "features.tier", "NUL character"),
        (
            {"lineage": PushLineage(source_system="cdc", source_ref="r\n1")},
            "lineage.source_ref",
            "control characters",
        ),
        (
            {"lineage": PushLineage(source_system="cdc", source_ref="r", transform="t\x7f")},
            "lineage.transform",
            "control characters",
        ),
        (
            {"event_time": EVENT_TIME.replace(tzinfo=None)},
            "event_time",
            "needs a UTC offset",
        ),
        (
            {"event_time": datetime.now(UTC) + timedelta(minutes=10)},
            "event_time",
            "in the future",
        ),
    ],
)
async def test_a_bad_push_is_a_400_naming_the_field_and_writes_nothing(
    pusher: FeaturePusher, store: FakeStore, changes: dict[str, Any], field: str, detail: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        await pusher.push(push(**changes))
    assert caught.value.field == field
    assert detail in caught.value.detail
    assert store.writes == []


async def test_a_little_clock_skew_is_tolerated(pusher: FeaturePusher, store: FakeStore) -> None:
    await pusher.push(push(event_time=datetime.now(UTC) + timedelta(minutes=1)))
    assert len(store.writes) == 1
