"""What the online store keeps per feature, and the ids and times derived from it.

No Redis: the stored layout is checked as bytes, since the store's compare-and-set
script reads the event time by its position in them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec

from gateway.features.online_store import (
    StoredValue,
    from_millis,
    lineage_id_for,
    to_millis,
)


def value(kind: str = "push") -> StoredValue:
    return StoredValue(
        value=2.5,
        event_time_ms=1_772_366_400_123,
        ingested_at_ms=1_772_366_400_456,
        lineage_id="lin_x",
        kind=kind,
        source_system="cdc",
        source_ref="r:1",
        schema_version=2,
        transform="sum_24h",
    )


LAYOUT_BEFORE_SEQUENCES = [
    2.5,
    1_772_366_400_123,
    1_772_366_400_456,
    "lin_x",
    "push",
    "cdc",
    "r:1",
    2,
    "sum_24h",
]


def test_event_time_and_sequence_are_the_second_and_tenth_elements() -> None:
    stored = msgspec.structs.replace(value(), sequence=42)
    raw = msgspec.msgpack.encode(stored)
    decoded = msgspec.msgpack.decode(raw)
    assert decoded[:9] == LAYOUT_BEFORE_SEQUENCES
    assert decoded[9] == 42
    assert msgspec.msgpack.decode(raw, type=StoredValue) == stored


def test_values_stored_before_sequences_existed_still_decode() -> None:
    raw = msgspec.msgpack.encode(LAYOUT_BEFORE_SEQUENCES)
    old = msgspec.msgpack.decode(raw, type=StoredValue)
    assert old == value()
    assert (old.sequence, old.deleted, old.effective_time_ms, old.change) == (0, False, None, None)


def test_lineage_carries_the_entity_and_times_as_utc() -> None:
    lineage = value().lineage("customer", "c-1")
    assert (lineage.entity, lineage.entity_id, lineage.lineage_id) == ("customer", "c-1", "lin_x")
    assert (lineage.source_system, lineage.source_ref, lineage.transform) == (
        "cdc",
        "r:1",
        "sum_24h",
    )
    assert lineage.schema_version == 2
    assert lineage.event_time == datetime(2026, 3, 1, 12, 0, 0, 123_000, tzinfo=UTC)
    assert lineage.ingested_at - lineage.event_time == timedelta(milliseconds=333)


def test_any_kind_but_push_is_lineage_of_a_fallback() -> None:
    assert value("push").lineage("c", "1").kind == "push"
    assert value("fallback").lineage("c", "1").kind == "fallback"
    assert value("backfill").lineage("c", "1").kind == "fallback"


def test_millis_round_trip_and_respect_the_offset() -> None:
    moment = datetime(2026, 3, 1, 14, 0, 0, 5_000, tzinfo=timezone(timedelta(hours=2)))
    assert to_millis(moment) == 1_772_366_400_005
    assert from_millis(to_millis(moment)) == moment
    assert from_millis(0) == datetime(1970, 1, 1, tzinfo=UTC)


def test_a_lineage_id_is_stable_per_record_and_parts_do_not_run_together() -> None:
    first = lineage_id_for("source:profile", "r:1", 1000)
    assert first == lineage_id_for("source:profile", "r:1", 1000)
    assert first.startswith("lin_")
    assert len(first) == len("lin_") + 24
    assert first != lineage_id_for("source:profile", "r:1", 1001)
    assert lineage_id_for("ab", "c") != lineage_id_for("a", "bc")
