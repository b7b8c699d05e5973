"""The online store's compare-and-set against real Redis: ordered by (event time,
sequence), duplicates recognised, deletions kept as markers that reads see missing."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
import redis.asyncio as aioredis

from contracts.registry import OnlineStoreSpec
from gateway.deadline import Deadline
from gateway.features import online_store
from gateway.features.online_store import EntityWrite, OnlineStore, StoredValue, StoreUnavailable

pytestmark = pytest.mark.services


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[OnlineStore]:
    online = OnlineStore.from_url(redis_url, redis_prefix, OnlineStoreSpec(), max_connections=4)
    yield online
    await online.close()


def stored(
    value: int | None, event_time_ms: int, sequence: int, deleted: bool = False
) -> StoredValue:
    return StoredValue(
        value=value,
        event_time_ms=event_time_ms,
        ingested_at_ms=event_time_ms + 5,
        lineage_id=f"lin_{event_time_ms}_{sequence}",
        kind="push",
        source_system="orders",
        source_ref=f"orders:{sequence}",
        schema_version=1,
        transform=None,
        sequence=sequence,
        deleted=deleted,
        channel="stream",
    )


def write(
    value: int | None, event_time_ms: int, sequence: int, deleted: bool = False
) -> EntityWrite:
    return EntityWrite(
        "customer",
        "c-1",
        event_time_ms,
        sequence,
        {"txn_count_30m": stored(value, event_time_ms, sequence, deleted)},
    )


async def current(store: OnlineStore) -> int | None:
    [found] = await store.read([("customer", "c-1", ["txn_count_30m"])], Deadline(5))
    value = found.get("txn_count_30m")
    return None if value is None else int(value.value)  # type: ignore[arg-type]


async def outcome(store: OnlineStore, entity_write: EntityWrite) -> str:
    [outcomes] = await store.write_many([entity_write], Deadline(5))
    return outcomes["txn_count_30m"]


async def test_order_is_event_time_then_sequence_and_a_repeat_is_a_duplicate(
    store: OnlineStore,
) -> None:
    assert await outcome(store, write(1, 1000, 7)) == "written"
    assert await outcome(store, write(2, 1000, 9)) == "written"
    assert await outcome(store, write(3, 1000, 8)) == "older"
    assert await outcome(store, write(2, 1000, 9)) == "duplicate"
    assert await outcome(store, write(4, 999, 50)) == "older"
    assert await current(store) == 2
    assert await outcome(store, write(5, 1001, 0)) == "written"
    assert await current(store) == 5


async def test_a_deletion_hides_the_value_and_an_older_change_cannot_bring_it_back(
    store: OnlineStore,
) -> None:
    assert await outcome(store, write(1, 1000, 1)) == "written"
    assert await outcome(store, write(None, 2000, 2, deleted=True)) == "written"
    assert await current(store) is None
    assert await outcome(store, write(7, 1500, 9)) == "older"
    assert await current(store) is None
    assert await outcome(store, write(8, 2500, 3)) == "written"
    assert await current(store) == 8


async def test_many_entities_in_one_pipeline_each_get_their_own_outcomes(
    store: OnlineStore,
) -> None:
    first = write(1, 1000, 1)
    other = first._replace(entity_id="c-2")
    outcomes = await store.write_many([first, other, write(0, 500, 1)], Deadline(5))
    assert [o["txn_count_30m"] for o in outcomes] == ["written", "written", "older"]


def event(value: int, event_time_ms: int, sequence: int, event_id: str) -> EntityWrite:
    base = write(value, event_time_ms, sequence)
    values = {
        name: msgspec.structs.replace(stored, event_id=event_id)
        for name, stored in base.values.items()
    }
    return base._replace(values=values, event_id=event_id)


async def test_the_same_event_at_another_offset_is_a_duplicate(store: OnlineStore) -> None:
    first = event(1, 1000, 7, "ev-1")
    again = event(1, 1000, 12, "ev-1")
    assert await outcome(store, first) == "written"
    assert await outcome(store, again) == "duplicate"
    other = event(3, 1000, 12, "ev-2")
    assert await outcome(store, other) == "written"
    assert await current(store) == 3


def many(count: int, event_time_ms: int, sequence: int = 1) -> list[EntityWrite]:
    return [write(i, event_time_ms, sequence)._replace(entity_id=f"c-{i}") for i in range(count)]


async def test_writes_of_many_calls_keep_their_order_and_outcomes(store: OnlineStore) -> None:
    # More entities than one script call takes: the outcomes still line up with the writes.
    first = await store.write_many(many(150, 1000), Deadline(5))
    assert [o["txn_count_30m"] for o in first] == ["written"] * 150
    later = [w._replace(event_time_ms=2000) if i % 2 else w for i, w in enumerate(many(150, 500))]
    later = [
        w._replace(values={"txn_count_30m": stored(i, w.event_time_ms, 1)})
        for i, w in enumerate(later)
    ]
    outcomes = await store.write_many(later, Deadline(5))
    assert [o["txn_count_30m"] for o in outcomes] == ["older", "written"] * 75
    rows = await store.read(
        [("customer", f"c-{i}", ["txn_count_30m"]) for i in (0, 1)], Deadline(5)
    )
    assert [row["txn_count_30m"].event_time_ms for row in rows] == [1000, 2000]


async def test_a_redis_without_the_script_gets_it_loaded(
    store: OnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A variant of the script that this Redis has never seen: its calls answer NOSCRIPT.
    script = online_store._COMPARE_AND_SET + f"-- {uuid.uuid4().hex}\n"
    sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    monkeypatch.setattr(online_store, "_COMPARE_AND_SET", script)
    monkeypatch.setattr(online_store, "_COMPARE_AND_SET_SHA", sha)
    outcomes = await store.write_many(many(100, 1000), Deadline(5))
    assert [o["txn_count_30m"] for o in outcomes] == ["written"] * 100
    again = await store.write_many(many(100, 1000), Deadline(5))
    assert [o["txn_count_30m"] for o in again] == ["duplicate"] * 100


async def test_an_error_reply_fails_the_write_and_the_store_goes_on(
    store: OnlineStore, redis_url: str, redis_prefix: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(f"{redis_prefix}:customer:c-5", "not a hash")
    finally:
        await client.aclose()
    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        await store.write_many(many(100, 1000), Deadline(5))
    outcomes = await store.write_many(many(3, 2000), Deadline(5))
    assert [o["txn_count_30m"] for o in outcomes] == ["written"] * 3
