"""Decoding records into feature changes: both formats, every rejection kind, backfill lines.

The Debezium fixtures in ``fixtures/`` are change events of a ``public.merchants``
table as the PostgreSQL connector and the JSON converter write them; each file says
in ``shape`` where its shape comes from. ``key`` and ``value`` are the record's key and
value as JSON (``null`` where the record has none).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts.features import ChangePosition, StreamPosition
from gateway.ingest.decoding import MAX_CLOCK_SKEW_MS, StreamDecoder, decode_backfill_line
from gateway.ingest.records import SCHEMA_CHANGE_KINDS, RawRecord, RecordRejected
from gateway.registry import Registry, parse_registry

FIXTURES = Path(__file__).parent / "fixtures"

REGISTRY = """
[[entities]]
name = "customer"
key = "customer_id"
pattern = "[A-Za-z0-9_-]{1,64}"

[[entities]]
name = "merchant"
key = "merchant_id"
pattern = "[A-Za-z0-9_-]{1,64}"

[[features]]
name = "kyc_level"
entity = "customer"
dtype = "int64"
max_staleness_ms = 1000

[[features]]
name = "txn_amount_sum_24h"
entity = "customer"
dtype = "float64"
max_staleness_ms = 1000

[[features]]
name = "segment"
entity = "customer"
dtype = "string"
max_staleness_ms = 1000

[[features]]
name = "chargeback_rate_90d"
entity = "merchant"
dtype = "float64"
max_staleness_ms = 1000

[[features]]
name = "merchant_name"
entity = "merchant"
dtype = "string"
max_staleness_ms = 1000

[[features]]
name = "blocked"
entity = "merchant"
dtype = "bool"
max_staleness_ms = 1000

[[streams]]
name = "customer_features"
topic = "features.customer"
format = "feature_update"
schema_versions = [1, 2]

[[streams]]
name = "any_version"
topic = "features.any"
format = "feature_update"

[[streams]]
name = "merchant_cdc"
topic = "riskdb.public.merchants"
format = "debezium"

[[streams.tables]]
table = "public.merchants"
entity = "merchant"
key_column = "merchant_id"
[streams.tables.columns]
chargeback_rate = { feature = "chargeback_rate_90d", dtype = "float64" }
name = { feature = "merchant_name", dtype = "string" }

[[streams]]
name = "ledger_cdc"
topic = "ledger.cdc"
format = "debezium"

[[streams.tables]]
table = "public.merchants"
entity = "merchant"
key_column = "merchant_id"
columns = { chargeback_rate = { feature = "chargeback_rate_90d", dtype = "float64" } }

[[streams.tables]]
table = "blocklist"
entity = "merchant"
key_column = "merchant"
columns = { blocked = { feature = "blocked", dtype = "bool" } }
"""

NOW = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def clock() -> float:
    return NOW


@pytest.fixture(scope="module")
def registry() -> Registry:
    return parse_registry(REGISTRY.encode())


def decoder(registry: Registry, topic: str) -> StreamDecoder:
    return StreamDecoder(registry.streams[topic], registry, clock=clock)


def rejected(call: Any, *args: Any) -> RecordRejected:
    with pytest.raises(RecordRejected) as caught:
        call(*args)
    return caught.value


# Feature-update events (CloudEvents, binary mode).

DATA: dict[str, Any] = {
    "entities": {"customer_id": "c-1"},
    "features": {"kyc_level": 3, "txn_amount_sum_24h": 120, "segment": "gold"},
    "event_time": "2025-12-31T23:59:00.250Z",
    "effective_time": "2026-01-01T00:00:00Z",
    "lineage": {
        "source_system": "core-banking",
        "source_ref": "accounts/c-1@9912",
        "schema_version": 1,
        "transform": "daily_rollup_v4",
    },
}

HEADERS = {
    "ce_specversion": b"1.0",
    "ce_id": b"evt-0001",
    "ce_source": b"urn:core-banking",
    "ce_type": b"scoregate.features.updated",
    "ce_time": b"2025-12-31T23:59:01Z",
    "content-type": b"application/json",
}


def update_record(
    data: dict[str, Any] | bytes | None = None,
    headers: dict[str, bytes | None] | None = None,
    extra: Sequence[tuple[str, bytes]] = (),
    topic: str = "features.customer",
    offset: int = 7,
) -> RawRecord:
    merged: dict[str, bytes | None] = {**HEADERS, **(headers or {})}
    value = (
        msgspec.json.encode(DATA if data is None else data) if not isinstance(data, bytes) else data
    )
    return RawRecord(
        topic=topic,
        partition=2,
        offset=offset,
        key=b"c-1",
        value=value,
        headers=[(k, v) for k, v in merged.items() if v is not None] + list(extra),
        timestamp_ms=1767225541000,
    )


def with_data(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(DATA)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = data
        for part in parents:
            node = node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return data


def test_a_feature_update_becomes_one_change(registry: Registry) -> None:
    decoded = decoder(registry, "features.customer").decode(update_record())
    (change,) = decoded.changes
    assert decoded.extra_fields == ()
    assert (change.entity, change.entity_id) == ("customer", "c-1")
    assert change.values == {"kyc_level": 3, "txn_amount_sum_24h": 120.0, "segment": "gold"}
    assert type(change.values["txn_amount_sum_24h"]) is float
    assert change.deleted == ()
    assert change.event_time_ms == 1767225540250
    assert change.effective_time_ms == 1767225600000
    assert (change.sequence, change.event_id, change.channel) == (7, "evt-0001", "stream")
    assert (change.source_system, change.source_ref) == ("core-banking", "accounts/c-1@9912")
    assert (change.schema_version, change.transform) == (1, "daily_rollup_v4")
    assert change.stream == StreamPosition(topic="features.customer", partition=2, offset=7)
    assert change.change is None


def test_optional_parts_of_an_update_may_be_left_out(registry: Registry) -> None:
    data = with_data(effective_time=..., lineage__transform=..., lineage__schema_version=...)
    (change,) = decoder(registry, "features.any").decode(update_record(data)).changes
    assert change.effective_time_ms is None
    assert (change.schema_version, change.transform) == (None, None)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"ce_specversion": None}, "header ce_specversion is missing"),
        ({"ce_specversion": b"0.3"}, "header ce_specversion is '0.3', not '1.0'"),
        ({"ce_type": None}, "header ce_type is missing"),
        ({"ce_type": b"scoregate.decision.made"}, "header ce_type is 'scoregate.decision.made'"),
        ({"ce_id": None}, "header ce_id is missing or empty"),
        ({"ce_id": b""}, "header ce_id is missing or empty"),
        ({"ce_id": b"evt\n1"}, "header ce_id holds control characters"),
        ({"ce_id": b"e" * 257}, "header ce_id is longer than 256 characters"),
        ({"ce_source": None}, "header ce_source is missing or empty"),
        ({"ce_time": None}, "header ce_time is missing or empty"),
        ({"ce_time": b"yesterday"}, "header ce_time is not an RFC 3339 time"),
        ({"ce_time": b"2025-12-31T23:59:01"}, "header ce_time is not an RFC 3339 time"),
        ({"ce_source": b"\xff\xfe"}, "header ce_source is not UTF-8"),
        ({"content-type": b"text/plain"}, "header content-type is 'text/plain'"),
    ],
)
def test_cloudevent_headers_are_checked(
    registry: Registry, headers: dict[str, bytes | None], message: str
) -> None:
    error = rejected(decoder(registry, "features.customer").decode, update_record(headers=headers))
    assert error.kind == "contract"
    assert message in error.detail


def test_a_header_sent_twice_is_refused(registry: Registry) -> None:
    record = update_record(extra=[("ce_id", b"evt-0002")])
    error = rejected(decoder(registry, "features.customer").decode, record)
    assert (error.kind, error.detail) == ("contract", "header ce_id appears twice")


def test_content_type_parameters_other_headers_and_no_content_type_pass(
    registry: Registry,
) -> None:
    decode = decoder(registry, "features.customer").decode
    charset = update_record(headers={"content-type": b"application/json; charset=utf-8"})
    assert len(decode(charset).changes) == 1
    traced = update_record(extra=[("traceparent", b"00-ab-cd-01"), ("ce_subject", b"c-1")])
    assert len(decode(traced).changes) == 1
    assert len(decode(update_record(headers={"content-type": None})).changes) == 1


def test_a_value_that_is_not_json_is_undecodable(registry: Registry) -> None:
    decode = decoder(registry, "features.customer").decode
    assert rejected(decode, update_record(b"{not json")).kind == "undecodable"
    assert rejected(decode, update_record(b"\xff\xfe")).kind == "undecodable"


def test_a_null_value_breaks_the_contract(registry: Registry) -> None:
    record = update_record()
    record = (
        RawRecord(**{**record.__dict__, "value": None}) if hasattr(record, "__dict__") else record
    )
    null = RawRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=None,
        headers=record.headers,
        timestamp_ms=record.timestamp_ms,
    )
    error = rejected(decoder(registry, "features.customer").decode, null)
    assert error.kind == "contract"
    assert "needs a value" in error.detail


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (with_data(features__kyc_level=None), "$.features.kyc_level"),
        (with_data(features={}), "$.features"),
        (with_data(entities={"customer_id": "c-1", "merchant_id": "m-1"}), "$.entities"),
        (with_data(entities={"customer_id": ""}), "$.entities.customer_id"),
        (with_data(event_time="2025-12-31T23:59:00"), "$.event_time"),
        (with_data(event_time=...), "$"),
        (with_data(lineage=...), "$"),
        (with_data(lineage__source_system=7), "$.lineage.source_system"),
        (with_data(colour="red"), "$"),
        (with_data(lineage__schema_version=-1), "$.lineage.schema_version"),
    ],
)
def test_a_value_off_the_contract_names_its_path(
    registry: Registry, data: dict[str, Any], path: str
) -> None:
    error = rejected(decoder(registry, "features.customer").decode, update_record(data))
    assert error.kind == "contract"
    assert error.detail.endswith(f" - at `{path}`"), error.detail


@pytest.mark.parametrize(
    ("data", "kind", "feature", "message"),
    [
        (
            with_data(entities={"merchant_id": "m-1"}, features={"kyc_level": 1}),
            "entity",
            "kyc_level",
            "belongs to entity 'customer', not 'merchant'",
        ),
        (with_data(entities={"shop_id": "s-1"}), "entity", None, "unknown entity key 'shop_id'"),
        (with_data(entities={"customer_id": "c 1"}), "entity", None, "customer_id must match"),
        (with_data(entities={"customer_id": "c\x00"}), "entity", None, "customer_id must match"),
        (with_data(features__kyc_levle=1), "unknown_feature", "kyc_levle", "unknown feature"),
        (with_data(features__kyc_level="3"), "dtype", "kyc_level", "expected int64, got str"),
        (with_data(features__kyc_level=True), "dtype", "kyc_level", "expected int64, got bool"),
        (with_data(features__kyc_level=2.5), "dtype", "kyc_level", "expected int64, got float"),
        (with_data(features__segment="a\x00b"), "contract", "segment", "NUL"),
        (with_data(lineage__source_ref="a\nb"), "contract", None, "$.lineage.source_ref"),
        (with_data(lineage__transform="\x7f"), "contract", None, "$.lineage.transform"),
    ],
)
def test_the_registry_checks_an_update(
    registry: Registry, data: dict[str, Any], kind: str, feature: str | None, message: str
) -> None:
    error = rejected(decoder(registry, "features.customer").decode, update_record(data))
    assert (error.kind, error.feature) == (kind, feature)
    assert message in error.detail


def test_a_schema_version_the_stream_does_not_accept_is_a_schema_change(
    registry: Registry,
) -> None:
    decode = decoder(registry, "features.customer").decode
    error = rejected(decode, update_record(with_data(lineage__schema_version=3)))
    assert error.kind == "schema_version" and error.kind in SCHEMA_CHANGE_KINDS
    assert error.feature == "kyc_level"
    assert "schema version 3; the stream accepts 1, 2" in error.detail
    unversioned = rejected(decode, update_record(with_data(lineage__schema_version=...)))
    assert unversioned.kind == "schema_version"
    assert "no schema version" in unversioned.detail
    assert len(decode(update_record(with_data(lineage__schema_version=2))).changes) == 1


def test_a_changed_shape_under_a_new_version_is_a_schema_change_not_a_contract_break(
    registry: Registry,
) -> None:
    decode = decoder(registry, "features.customer").decode
    reshaped = with_data(lineage__schema_version=3, features=..., values={"kyc_level": 1})
    assert rejected(decode, update_record(reshaped)).kind == "schema_version"
    # Under an accepted version the same shape breaks the contract.
    assert rejected(decode, update_record(with_data(values={}))).kind == "contract"
    # Features named under a new version count for the first one the registry knows.
    renamed = with_data(lineage__schema_version=3, features={"kyc": 1, "segment": 2})
    assert rejected(decode, update_record(renamed)).feature == "segment"


def test_a_stream_without_versions_accepts_any(registry: Registry) -> None:
    data = with_data(lineage__schema_version=99)
    (change,) = decoder(registry, "features.any").decode(update_record(data)).changes
    assert change.schema_version == 99


def test_an_event_time_from_the_future_is_refused(registry: Registry) -> None:
    decode = decoder(registry, "features.customer").decode
    soon = datetime.fromtimestamp(NOW + 240, tz=UTC).isoformat()
    assert len(decode(update_record(with_data(event_time=soon))).changes) == 1
    later = datetime.fromtimestamp(NOW + MAX_CLOCK_SKEW_MS / 1000 + 60, tz=UTC).isoformat()
    error = rejected(decode, update_record(with_data(event_time=later)))
    assert error.kind == "contract"
    assert "event_time is 360 s ahead" in error.detail


# Backfill lines: the same event in CloudEvents structured mode.


def structured(**changes: Any) -> bytes:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-0001",
        "source": "urn:core-banking",
        "type": "scoregate.features.updated",
        "time": "2025-12-31T23:59:01Z",
        "datacontenttype": "application/json",
        "data": DATA,
    }
    for name, value in changes.items():
        if value is ...:
            del event[name]
        else:
            event[name] = value
    return msgspec.json.encode(event)


def test_a_backfill_line_is_a_change_of_channel_backfill(registry: Registry) -> None:
    (change,) = decode_backfill_line(structured(), registry, clock=clock).changes
    assert (change.channel, change.sequence, change.stream) == ("backfill", 0, None)
    assert change.event_id == "evt-0001"
    assert change.values["kyc_level"] == 3
    assert change.event_time_ms == 1767225540250


def test_a_backfill_line_may_carry_extension_attributes_and_no_content_type(
    registry: Registry,
) -> None:
    line = structured(traceparent="00-ab-cd-01", datacontenttype=...)
    assert len(decode_backfill_line(line, registry, clock=clock).changes) == 1


def test_a_blank_backfill_line_makes_no_change(registry: Registry) -> None:
    assert decode_backfill_line(b"  \n", registry).changes == ()


@pytest.mark.parametrize(
    ("line", "kind", "message"),
    [
        (structured(type="scoregate.decision.made"), "contract", "at `$.type`"),
        (structured(specversion="0.3"), "contract", "at `$.specversion`"),
        (structured(id=""), "contract", "at `$.id`"),
        (structured(id="a\tb"), "contract", "at `$.id`"),
        (structured(time="2025-12-31T23:59:01"), "contract", "at `$.time`"),
        (structured(data=...), "contract", "`data`"),
        (structured(datacontenttype="text/csv"), "contract", "at `$.datacontenttype`"),
        (
            structured(data=with_data(features__kyc_level=None)),
            "contract",
            "at `$.data.features.kyc_level`",
        ),
        (structured(data=with_data(features__kyc_level="x")), "dtype", "expected int64"),
        (structured(data=with_data(features__nope=1)), "unknown_feature", "'nope'"),
        (b'{"specversion": "1.0",', "undecodable", "not JSON"),
    ],
)
def test_a_bad_backfill_line_is_refused(
    registry: Registry, line: bytes, kind: str, message: str
) -> None:
    error = rejected(decode_backfill_line, line, registry)
    assert error.kind == kind
    assert message in error.detail


def test_backfill_checks_the_schema_versions_it_is_given(registry: Registry) -> None:
    line = structured(data=with_data(lineage__schema_version=3))
    assert len(decode_backfill_line(line, registry, clock=clock).changes) == 1
    with pytest.raises(RecordRejected) as caught:
        decode_backfill_line(line, registry, schema_versions=(1,), clock=clock)
    assert caught.value.kind == "schema_version"


def test_a_broken_backfill_update_under_a_new_version_is_a_schema_change(
    registry: Registry,
) -> None:
    line = structured(data=with_data(lineage__schema_version=3, values={}))
    with pytest.raises(RecordRejected) as caught:
        decode_backfill_line(line, registry, schema_versions=(1, 2))
    assert caught.value.kind == "schema_version"


# Debezium change events.


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    assert loaded["shape"], "every fixture says where its shape comes from"
    return loaded


def cdc_record(doc: dict[str, Any], **changes: Any) -> RawRecord:
    doc = {**doc, **changes}

    def encoded(part: Any) -> bytes | None:
        return None if part is None else msgspec.json.encode(part)

    return RawRecord(
        topic=doc["topic"],
        partition=doc["partition"],
        offset=doc["offset"],
        key=encoded(doc["key"]),
        value=encoded(doc["value"]),
        headers=[],
        timestamp_ms=doc["timestamp_ms"],
    )


def test_a_create_with_the_schema_envelope_writes_the_mapped_columns(registry: Registry) -> None:
    decoded = decoder(registry, "riskdb.public.merchants").decode(
        cdc_record(fixture("pg_create_with_schema.json"))
    )
    (change,) = decoded.changes
    assert (change.entity, change.entity_id) == ("merchant", "m-7")
    assert change.values == {"chargeback_rate_90d": 0.0125, "merchant_name": "Corner Books"}
    assert change.deleted == ()
    assert change.event_time_ms == 1764583200123  # source.ts_ms: the commit
    assert change.sequence == 24023128  # source.lsn
    assert change.channel == "cdc"
    assert change.effective_time_ms is None and change.schema_version is None
    assert (change.source_system, change.source_ref) == ("riskdb", "risk.public.merchants:24023128")
    assert change.change == ChangePosition(
        connector="postgresql",
        name="riskdb",
        database="risk",
        schema="public",
        table="merchants",
        lsn=24023128,
        tx_id=555,
        snapshot=False,
    )
    assert change.stream == StreamPosition(topic="riskdb.public.merchants", partition=0, offset=41)
    assert decoded.extra_fields == ("updated_at",)


def test_a_change_event_id_is_stable_and_names_the_change(registry: Registry) -> None:
    create = cdc_record(fixture("pg_create_with_schema.json"))
    first = decoder(registry, "riskdb.public.merchants").decode(create).changes[0]
    again = decoder(registry, "riskdb.public.merchants").decode(create).changes[0]
    update = cdc_record(fixture("pg_update.json"))
    other = decoder(registry, "riskdb.public.merchants").decode(update).changes[0]
    assert first.event_id == again.event_id
    assert first.event_id.startswith("cdc_")
    assert other.event_id != first.event_id


def test_an_update_without_the_envelope_orders_after_the_create_by_lsn(registry: Registry) -> None:
    decode = decoder(registry, "riskdb.public.merchants").decode
    create = decode(cdc_record(fixture("pg_create_with_schema.json"))).changes[0]
    decoded = decode(cdc_record(fixture("pg_update.json")))
    (update,) = decoded.changes
    assert update.values == {"chargeback_rate_90d": 0.0131, "merchant_name": "Corner Books Ltd"}
    assert (update.event_time_ms, update.sequence) > (create.event_time_ms, create.sequence)
    assert update.sequence == 24023304
    assert update.change is not None and update.change.tx_id == 556
    assert decoded.extra_fields == ("updated_at",)


def test_a_delete_deletes_the_mapped_features_and_its_tombstone_adds_nothing(
    registry: Registry,
) -> None:
    decode = decoder(registry, "riskdb.public.merchants").decode
    (delete,) = decode(cdc_record(fixture("pg_delete_with_schema.json"))).changes
    assert delete.entity_id == "m-7"
    assert delete.values == {}
    assert delete.deleted == ("chargeback_rate_90d", "merchant_name")
    assert (delete.event_time_ms, delete.sequence) == (1764583320077, 24023512)
    # The tombstone right after it (next offset, same key) carries nothing new.
    assert decode(cdc_record(fixture("pg_tombstone.json"))).changes == ()


def test_a_tombstone_alone_deletes_as_of_its_timestamp(registry: Registry) -> None:
    decode = decoder(registry, "riskdb.public.merchants").decode
    decoded = decode(cdc_record(fixture("pg_tombstone.json")))
    (change,) = decoded.changes
    assert (change.entity_id, change.values) == ("m-7", {})
    assert change.deleted == ("chargeback_rate_90d", "merchant_name")
    assert (change.event_time_ms, change.sequence) == (1764583320211, 44)
    assert change.change is None
    assert change.source_system == "merchant_cdc"
    assert change.source_ref == "public.merchants@riskdb.public.merchants/0/44"
    assert change.event_id.startswith("cdc_")


def test_a_tombstone_after_another_rows_delete_is_its_own(registry: Registry) -> None:
    decode = decoder(registry, "riskdb.public.merchants").decode
    decode(cdc_record(fixture("pg_delete_with_schema.json")))
    other = cdc_record(fixture("pg_tombstone.json"), key={"merchant_id": "m-8"})
    (change,) = decode(other).changes
    assert change.entity_id == "m-8"


def test_a_tombstone_needs_a_key_and_a_timestamp(registry: Registry) -> None:
    decode = decoder(registry, "riskdb.public.merchants").decode
    error = rejected(decode, cdc_record(fixture("pg_tombstone.json"), key=None))
    assert error.kind == "contract" and "without a key" in error.detail
    error = rejected(decode, cdc_record(fixture("pg_tombstone.json"), timestamp_ms=-1))
    assert error.kind == "contract" and "without a timestamp" in error.detail


def test_a_snapshot_read_writes_like_a_create(registry: Registry) -> None:
    (change,) = (
        decoder(registry, "riskdb.public.merchants")
        .decode(cdc_record(fixture("pg_snapshot_read.json")))
        .changes
    )
    assert change.entity_id == "m-9"
    assert change.values == {"chargeback_rate_90d": 0.004, "merchant_name": "Harbour Cafe"}
    assert change.change is not None and change.change.snapshot is True
    assert change.sequence == 24016880


@pytest.mark.parametrize("op", ["t", "m", "x", 1, None])
def test_truncate_and_other_ops_are_unsupported(registry: Registry, op: Any) -> None:
    doc = fixture("pg_truncate.json")
    doc["value"]["op"] = op
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert error.kind == "unsupported_op"
    assert error.detail.endswith("at `$.op`")
    if op == "t":
        assert "truncate" in error.detail


def test_a_flattened_create_writes_and_its_metadata_is_no_extra_field(registry: Registry) -> None:
    decoded = decoder(registry, "riskdb.public.merchants").decode(
        cdc_record(fixture("pg_flattened_create_with_schema.json"))
    )
    (change,) = decoded.changes
    assert change.values == {"chargeback_rate_90d": 0.0125, "merchant_name": "Corner Books"}
    assert (change.event_time_ms, change.sequence) == (1764583200123, 24023128)
    assert decoded.extra_fields == ("updated_at",)
    assert change.change is not None
    assert (change.change.schema, change.change.table, change.change.lsn) == (
        "public",
        "merchants",
        24023128,
    )
    assert change.source_ref == "public.merchants:24023128"


def test_a_flattened_delete_rewritten_with_deleted_true_deletes(registry: Registry) -> None:
    doc = fixture("pg_flattened_delete.json")
    (change,) = decoder(registry, "riskdb.public.merchants").decode(cdc_record(doc)).changes
    assert change.deleted == ("chargeback_rate_90d", "merchant_name")
    assert (change.event_time_ms, change.sequence) == (1764583320077, 24023512)
    # Without __op, __deleted alone tells a delete.
    del doc["value"]["__op"]
    (change,) = decoder(registry, "riskdb.public.merchants").decode(cdc_record(doc)).changes
    assert change.deleted == ("chargeback_rate_90d", "merchant_name")


def test_the_default_flattened_delete_is_a_null_value_and_its_tombstone_adds_nothing(
    registry: Registry,
) -> None:
    decode = decoder(registry, "riskdb.public.merchants").decode
    doc = fixture("pg_flattened_default_delete.json")
    (change,) = decode(cdc_record(doc)).changes
    assert (change.entity_id, change.deleted) == ("m-8", ("chargeback_rate_90d", "merchant_name"))
    assert (change.event_time_ms, change.sequence) == (doc["timestamp_ms"], 30)
    tombstone = cdc_record(doc, offset=31, value=None)
    assert decode(tombstone).changes == ()


def test_a_flattened_change_needs_its_commit_time(registry: Registry) -> None:
    doc = fixture("pg_flattened_create_with_schema.json")
    del doc["value"]["payload"]["__source_ts_ms"]
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert error.kind == "contract"
    assert "add source.ts_ms" in error.detail
    assert error.detail.endswith("at `$.payload.__source_ts_ms`")


def test_a_flattened_change_without_an_lsn_is_ordered_by_its_offset(registry: Registry) -> None:
    doc = fixture("pg_flattened_delete.json")
    del doc["value"]["__lsn"]
    (change,) = decoder(registry, "riskdb.public.merchants").decode(cdc_record(doc)).changes
    assert change.sequence == 18
    assert change.source_ref == "public.merchants@riskdb.public.merchants/1/18"


def test_a_mapped_column_missing_from_the_row_is_a_schema_change(registry: Registry) -> None:
    doc = fixture("pg_update.json")
    del doc["value"]["after"]["chargeback_rate"]
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert (error.kind, error.feature) == ("missing_column", "chargeback_rate_90d")
    assert error.kind in SCHEMA_CHANGE_KINDS


def _after_schema(doc: dict[str, Any]) -> list[dict[str, Any]]:
    after = next(f for f in doc["value"]["schema"]["fields"] if f["field"] == "after")
    fields: list[dict[str, Any]] = after["fields"]
    return fields


def test_a_mapped_column_missing_from_the_schema_is_a_schema_change(registry: Registry) -> None:
    doc = fixture("pg_create_with_schema.json")
    after = next(f for f in doc["value"]["schema"]["fields"] if f["field"] == "after")
    after["fields"] = [f for f in after["fields"] if f["field"] != "name"]
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert (error.kind, error.feature) == ("missing_column", "merchant_name")
    assert "schema" in error.detail


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"type": "int32", "optional": True, "field": "chargeback_rate"}, "declared int32"),
        ({"type": "string", "optional": True, "field": "chargeback_rate"}, "declared string"),
        (
            {
                "type": "bytes",
                "optional": True,
                "name": "org.apache.kafka.connect.data.Decimal",
                "version": 1,
                "parameters": {"scale": "4", "connect.decimal.precision": "6"},
                "field": "chargeback_rate",
            },
            "is a decimal",
        ),
        (
            {
                "type": "struct",
                "fields": [
                    {"type": "int32", "optional": False, "field": "scale"},
                    {"type": "bytes", "optional": False, "field": "value"},
                ],
                "optional": True,
                "name": "io.debezium.data.VariableScaleDecimal",
                "version": 1,
                "doc": "Variable scaled decimal",
                "field": "chargeback_rate",
            },
            "is a decimal",
        ),
    ],
)
def test_a_column_declared_another_type_is_a_schema_change(
    registry: Registry, declared: dict[str, Any], message: str
) -> None:
    doc = fixture("pg_create_with_schema.json")
    fields = _after_schema(doc)
    fields[[f["field"] for f in fields].index("chargeback_rate")] = declared
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert (error.kind, error.feature) == ("column_type", "chargeback_rate_90d")
    assert message in error.detail


@pytest.mark.parametrize("declared", ["float", "float32", "float64"])
def test_a_float_column_fits_a_float64_feature(registry: Registry, declared: str) -> None:
    # The JSON converter writes FLOAT32 as "float"; the Connect type names pass too.
    doc = fixture("pg_create_with_schema.json")
    fields = _after_schema(doc)
    fields[[f["field"] for f in fields].index("chargeback_rate")]["type"] = declared
    decoded = decoder(registry, "riskdb.public.merchants").decode(cdc_record(doc))
    assert decoded.changes[0].values["chargeback_rate_90d"] == 0.0125


@pytest.mark.parametrize("value", ["0.0125", "AYag", True, [1]])
def test_a_column_value_of_another_type_is_a_schema_change(registry: Registry, value: Any) -> None:
    doc = fixture("pg_update.json")
    doc["value"]["after"]["chargeback_rate"] = value
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert (error.kind, error.feature) == ("column_type", "chargeback_rate_90d")


def test_a_null_column_deletes_its_feature_and_the_others_are_written(registry: Registry) -> None:
    doc = fixture("pg_update.json")
    doc["value"]["after"]["chargeback_rate"] = None
    (change,) = decoder(registry, "riskdb.public.merchants").decode(cdc_record(doc)).changes
    assert change.values == {"merchant_name": "Corner Books Ltd"}
    assert change.deleted == ("chargeback_rate_90d",)


def test_a_nul_in_a_text_column_is_refused(registry: Registry) -> None:
    doc = fixture("pg_update.json")
    doc["value"]["after"]["name"] = "a\x00b"
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert (error.kind, error.feature) == ("contract", "merchant_name")


def test_new_unmapped_columns_are_compatible_and_listed(registry: Registry) -> None:
    doc = fixture("pg_update.json")
    doc["value"]["after"]["risk_tier"] = "B"
    decoded = decoder(registry, "riskdb.public.merchants").decode(cdc_record(doc))
    assert decoded.extra_fields == ("updated_at", "risk_tier")
    assert len(decoded.changes) == 1


@pytest.mark.parametrize(
    ("key", "after_id", "expected"),
    [
        ({"merchant_id": 7}, "m-7", "7"),
        ("m-5", "m-7", "m-5"),
        (None, "m-7", "m-7"),
        ({"id": 1}, "m-6", "m-6"),
    ],
)
def test_the_entity_id_comes_from_the_key_else_the_row(
    registry: Registry, key: Any, after_id: Any, expected: str
) -> None:
    doc = fixture("pg_update.json")
    doc["key"] = key
    doc["value"]["after"]["merchant_id"] = after_id
    (change,) = decoder(registry, "riskdb.public.merchants").decode(cdc_record(doc)).changes
    assert change.entity_id == expected


@pytest.mark.parametrize(
    ("key", "after_id", "kind"),
    [
        ({"merchant_id": "m 7"}, "m-7", "entity"),
        ({"merchant_id": "m\n7"}, "m-7", "entity"),
        ({"merchant_id": 1.5}, "m-7", "column_type"),
        ({"merchant_id": True}, "m-7", "column_type"),
        (None, None, "missing_column"),
    ],
)
def test_an_entity_id_the_registry_refuses(
    registry: Registry, key: Any, after_id: Any, kind: str
) -> None:
    doc = fixture("pg_update.json")
    doc["key"] = key
    doc["value"]["after"]["merchant_id"] = after_id
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert error.kind == kind
    assert "merchant_id" in error.detail


def test_a_delete_without_a_before_image_takes_the_id_from_the_key(registry: Registry) -> None:
    doc = fixture("pg_delete_with_schema.json")
    doc["value"]["payload"]["before"] = None  # REPLICA IDENTITY NOTHING
    (change,) = decoder(registry, "riskdb.public.merchants").decode(cdc_record(doc)).changes
    assert change.entity_id == "m-7"


def test_a_table_the_stream_does_not_map_breaks_the_contract(registry: Registry) -> None:
    doc = fixture("pg_update.json")
    doc["value"]["source"]["table"] = "shops"
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert error.kind == "contract"
    assert "table public.shops is not mapped by stream merchant_cdc" in error.detail
    assert error.detail.endswith("at `$.source.table`")


def test_tables_of_a_shared_topic_are_told_apart(registry: Registry) -> None:
    decode = decoder(registry, "ledger.cdc").decode
    doc = fixture("pg_update.json")
    doc["topic"] = "ledger.cdc"
    (merchants,) = decode(cdc_record(doc)).changes
    assert merchants.values == {"chargeback_rate_90d": 0.0131}
    # `blocklist` is mapped without a schema: it matches in any schema.
    doc["key"] = {"merchant": "m-3"}
    doc["value"]["source"].update(schema="ops", table="blocklist")
    doc["value"]["after"] = {"merchant": "m-3", "blocked": True}
    (blocked,) = decode(cdc_record(doc)).changes
    assert (blocked.entity_id, blocked.values) == ("m-3", {"blocked": True})


def test_a_flattened_change_of_a_shared_topic_names_its_table(registry: Registry) -> None:
    decode = decoder(registry, "ledger.cdc").decode
    doc = fixture("pg_flattened_delete.json")
    doc["topic"] = "ledger.cdc"
    (change,) = decode(cdc_record(doc)).changes
    assert change.deleted == ("chargeback_rate_90d",)
    del doc["value"]["__table"]
    error = rejected(decode, cdc_record(doc))
    assert (error.kind, error.detail) == ("contract", "the change names no table - at `$.__table`")


def test_a_tombstone_of_a_shared_topic_finds_its_table_by_its_key(registry: Registry) -> None:
    decode = decoder(registry, "ledger.cdc").decode
    enveloped = cdc_record(fixture("pg_tombstone.json"), topic="ledger.cdc")
    assert decode(enveloped).changes[0].deleted == ("chargeback_rate_90d",)
    by_column = cdc_record(
        fixture("pg_tombstone.json"), topic="ledger.cdc", key={"merchant": "m-3"}
    )
    assert decode(by_column).changes[0].deleted == ("blocked",)
    unknown = cdc_record(fixture("pg_tombstone.json"), topic="ledger.cdc", key={"x": "m-3"})
    assert rejected(decode, unknown).kind == "contract"


def test_bytes_that_are_not_json_are_undecodable(registry: Registry) -> None:
    decode = decoder(registry, "riskdb.public.merchants").decode
    good = cdc_record(fixture("pg_update.json"))
    broken_value = RawRecord(
        topic=good.topic,
        partition=good.partition,
        offset=good.offset,
        key=good.key,
        value=b'{"before": ',
        headers=(),
        timestamp_ms=good.timestamp_ms,
    )
    assert rejected(decode, broken_value).kind == "undecodable"
    broken_key = RawRecord(
        topic=good.topic,
        partition=good.partition,
        offset=good.offset,
        key=b"m-7",
        value=good.value,
        headers=(),
        timestamp_ms=good.timestamp_ms,
    )
    error = rejected(decode, broken_key)
    assert (error.kind, error.detail[:19]) == ("undecodable", "the key is not JSON")


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"ts_ms": "1764583260045"}, "$.source.ts_ms"),
        ({"ts_ms": ...}, "$.source"),
        ({"lsn": "0/16E4A28"}, "$.source.lsn"),
        ({"db": None}, "$.source.db"),
    ],
)
def test_a_source_block_off_its_shape_breaks_the_contract(
    registry: Registry, change: dict[str, Any], path: str
) -> None:
    doc = fixture("pg_update.json")
    for name, value in change.items():
        if value is ...:
            del doc["value"]["source"][name]
        else:
            doc["value"]["source"][name] = value
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert error.kind == "contract"
    assert error.detail.endswith(f"at `{path}`"), error.detail


def test_a_source_path_inside_the_envelope_is_under_payload(registry: Registry) -> None:
    doc = fixture("pg_create_with_schema.json")
    doc["value"]["payload"]["source"]["ts_ms"] = None
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert error.detail.endswith("at `$.payload.source.ts_ms`")


def test_a_create_without_its_row_breaks_the_contract(registry: Registry) -> None:
    doc = fixture("pg_update.json")
    doc["value"]["after"] = None
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert error.kind == "contract"
    assert error.detail.endswith("at `$.after`")


def test_a_commit_time_from_the_future_is_refused(registry: Registry) -> None:
    doc = fixture("pg_update.json")
    doc["value"]["source"]["ts_ms"] = int(NOW * 1000) + MAX_CLOCK_SKEW_MS + 1000
    error = rejected(decoder(registry, "riskdb.public.merchants").decode, cdc_record(doc))
    assert error.kind == "contract"
    assert "source.ts_ms is" in error.detail
