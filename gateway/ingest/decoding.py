"""Decoding consumed records into feature changes, against their contract and the registry.

Pure logic: bytes in, :class:`~gateway.ingest.records.Decoded` out, or
:class:`~gateway.ingest.records.RecordRejected` naming what failed and where. Nothing
here touches Kafka or Redis.

Two formats, as the registry's streams declare:

- ``feature_update``: scoregate's feature-update CloudEvent in Kafka binary mode. The
  ``ce_*`` headers are checked, the value is a :class:`~contracts.ingest.FeatureUpdate`,
  its entity, features and values are checked as ``POST /features/push`` checks them,
  and its schema version must be one the stream accepts. The record's offset orders
  updates of one event time.
- ``debezium``: Debezium change events from the JSON converter, with or without its
  ``schema``/``payload`` envelope, or flattened by ``ExtractNewRecordState``. Creates,
  updates and snapshot reads write the row's mapped columns; deletes and tombstones
  delete the mapped features. Event time is the source's commit time
  (``source.ts_ms``), and the log sequence number orders the changes of one row.

A backfill line is a feature-update event in CloudEvents structured mode
(:func:`decode_backfill_line`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import msgspec

from contracts.features import (
    ChangePosition,
    Channel,
    FeatureScalar,
    PushLineage,
    StreamPosition,
)
from contracts.ingest import (
    CE_ID,
    CE_SOURCE,
    CE_SPECVERSION,
    CE_TIME,
    CE_TYPE,
    CONTENT_TYPE,
    CONTENT_TYPE_HEADER,
    FEATURES_UPDATED,
    SPEC_VERSION,
    AwareTime,
    FeatureUpdate,
    FeatureUpdateEvent,
)
from contracts.registry import DType, Stream, TableMapping
from gateway.features.online_store import to_millis
from gateway.field_paths import misfit
from gateway.ingest.records import Decoded, FeatureChange, RawRecord, RecordRejected
from gateway.registry import CONTROL_CHARACTER, EntityIds, Registry, coerce

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time``)."""

MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
"""How far an event time may lie ahead of our clock. A later one is a producer's bug;
accepting it would pin the value, since nothing older may overwrite it."""

_update = msgspec.json.Decoder(FeatureUpdate)
_structured = msgspec.json.Decoder(FeatureUpdateEvent)
_moment = msgspec.json.Decoder(AwareTime)
# Debezium rows are shaped by their tables, so they decode into plain JSON values.
_json = msgspec.json.Decoder()


class _PeekedLineage(msgspec.Struct):
    schema_version: Any = None


class _Peeked(msgspec.Struct):
    """What an update that fails its contract may still tell: its schema version."""

    lineage: _PeekedLineage | None = None
    features: dict[str, Any] | None = None


_peek = msgspec.json.Decoder(_Peeked)


def _rejected_at(exc: msgspec.ValidationError, root: str) -> str:
    """The message of msgspec's error, its path re-rooted (`$.ts_ms` under `$.payload.source`)."""
    message, _, where = str(exc).rpartition(" - at `")
    if not message:
        return f"{exc} - at `{root}`"
    return f"{message} - at `{root}{where.rstrip('`')[1:]}`"


def _update_misfit(exc: msgspec.ValidationError, data: bytes, root: str) -> str:
    """The error of an update that does not decode, naming the dict key msgspec leaves out."""
    detail = _rejected_at(exc, root)
    if "[...]" not in detail:
        return detail
    try:
        parts = misfit(_json.decode(data), FeatureUpdate)
    except msgspec.DecodeError:
        return detail
    if not parts:
        return detail
    return f"{detail.rpartition(' - at `')[0]} - at `{root}.{'.'.join(parts)}`"


def _future(event_time_ms: int, clock: Clock, what: str) -> None:
    ahead = event_time_ms - int(clock() * 1000)
    if ahead > MAX_CLOCK_SKEW_MS:
        raise RecordRejected("contract", f"{what} is {ahead / 1000:.0f} s ahead of this clock")


class _UpdateChecker:
    """The registry's checks of one feature update, shared by streams and backfill."""

    def __init__(self, registry: Registry, schema_versions: Collection[int], clock: Clock) -> None:
        self._registry = registry
        self._versions = frozenset(schema_versions)
        self._clock = clock

    def parse(self, data: bytes, root: str) -> FeatureUpdate:
        """Decode the data of one event, refusing what is not a :class:`FeatureUpdate`."""
        try:
            return _update.decode(data)
        except msgspec.ValidationError as exc:
            self._version_of_broken(data)
            raise RecordRejected("contract", _update_misfit(exc, data, root)) from exc
        except msgspec.DecodeError as exc:
            raise RecordRejected("undecodable", f"the value is not JSON: {exc}") from exc

    def _version_of_broken(self, data: bytes) -> None:
        """A changed shape under a version the stream does not take is a schema change."""
        try:
            peeked = _peek.decode(data)
        except msgspec.DecodeError:
            return
        version = None if peeked.lineage is None else peeked.lineage.schema_version
        if _is_int(version) and version >= 0:
            self._version(version, list(peeked.features or ()))

    def _version(self, version: int | None, features: Sequence[str]) -> None:
        if not self._versions or version in self._versions:
            return
        known = [name for name in features if name in self._registry.features]
        accepted = ", ".join(map(str, sorted(self._versions)))
        said = "no schema version" if version is None else f"schema version {version}"
        raise RecordRejected(
            "schema_version",
            f"the event has {said}; the stream accepts {accepted} - at `$.lineage.schema_version`",
            known[0] if known else None,
        )

    def change(
        self,
        update: FeatureUpdate,
        *,
        event_id: str,
        channel: Channel,
        sequence: int,
        stream: StreamPosition | None,
    ) -> FeatureChange:
        """The change an update makes, once its entity, features and lineage pass."""
        lineage = update.lineage
        self._version(lineage.schema_version, list(update.features))
        ((key, entity_id),) = update.entities.items()
        entity = self._registry.entity_by_key.get(key)
        if entity is None:
            raise RecordRejected("entity", f"unknown entity key {key!r} - at `$.entities`")
        problem = self._registry.ids[entity.name].problem(entity_id)
        if problem is not None:
            raise RecordRejected("entity", f"{problem} - at `$.entities.{key}`")
        values = {
            name: self._value(entity.name, name, raw) for name, raw in update.features.items()
        }
        _check_lineage(lineage)
        event_time_ms = to_millis(update.event_time)
        _future(event_time_ms, self._clock, "event_time")
        return FeatureChange(
            entity=entity.name,
            entity_id=entity_id,
            values=values,
            deleted=(),
            event_time_ms=event_time_ms,
            effective_time_ms=(
                None if update.effective_time is None else to_millis(update.effective_time)
            ),
            sequence=sequence,
            event_id=event_id,
            channel=channel,
            source_system=lineage.source_system,
            source_ref=lineage.source_ref,
            schema_version=lineage.schema_version,
            transform=lineage.transform,
            stream=stream,
        )

    def _value(self, entity: str, name: str, raw: FeatureScalar) -> FeatureScalar:
        feature = self._registry.features.get(name)
        at = f" - at `$.features.{name}`"
        if feature is None:
            raise RecordRejected("unknown_feature", f"unknown feature {name!r}{at}", name)
        if feature.entity != entity:
            raise RecordRejected(
                "entity",
                f"feature {name!r} belongs to entity {feature.entity!r}, not {entity!r}{at}",
                name,
            )
        try:
            value = coerce(raw, feature.dtype)
        except TypeError as exc:
            raise RecordRejected("dtype", f"{exc}{at}", name) from exc
        if isinstance(value, str) and "\x00" in value:
            # Served into decision records, which PostgreSQL could not read back.
            raise RecordRejected("contract", f"a NUL character cannot be stored{at}", name)
        return value


def _check_lineage(lineage: PushLineage) -> None:
    for part, text in (
        ("source_system", lineage.source_system),
        ("source_ref", lineage.source_ref),
        ("transform", lineage.transform),
    ):
        if text is not None and CONTROL_CHARACTER.search(text):
            raise RecordRejected(
                "contract", f"control characters are refused - at `$.lineage.{part}`"
            )


class StreamDecoder:
    """Decodes the records of one stream into feature changes.

    Build one per stream and reuse it. Records of one partition are best decoded in
    offset order: a Debezium tombstone right after the delete it follows is known to
    add nothing.

    Args:
        stream: the registry's stream the records come from.
        registry: the checked registry.
        clock: seconds since the epoch, to refuse event times from the future.
    """

    def __init__(self, stream: Stream, registry: Registry, *, clock: Clock = time.time) -> None:
        self.stream = stream
        self._decode: Callable[[RawRecord], Decoded]
        if stream.format == "feature_update":
            self._decode = _FeatureUpdates(stream, registry, clock).decode
        else:
            self._decode = _ChangeEvents(stream, registry, clock).decode

    def decode(self, record: RawRecord) -> Decoded:
        """The changes one record makes.

        Raises:
            RecordRejected: the record fails its contract or the registry.
        """
        return self._decode(record)


_CE_HEADERS = frozenset({CE_SPECVERSION, CE_ID, CE_SOURCE, CE_TYPE, CE_TIME, CONTENT_TYPE_HEADER})


class _FeatureUpdates:
    """Feature-update CloudEvents in binary mode."""

    def __init__(self, stream: Stream, registry: Registry, clock: Clock) -> None:
        self._checker = _UpdateChecker(registry, stream.schema_versions, clock)

    def decode(self, record: RawRecord) -> Decoded:
        event_id = self._check_headers(record)
        if record.value is None:
            raise RecordRejected("contract", "a feature update needs a value; this one is null")
        update = self._checker.parse(record.value, "$")
        change = self._checker.change(
            update,
            event_id=event_id,
            channel="stream",
            sequence=record.offset,
            stream=StreamPosition(
                topic=record.topic, partition=record.partition, offset=record.offset
            ),
        )
        return Decoded(changes=(change,))

    @staticmethod
    def _check_headers(record: RawRecord) -> str:
        """The event id, once the CloudEvents headers are those of a feature update."""
        found: dict[str, str] = {}
        for name, raw in record.headers:
            name = name.lower()
            if name not in _CE_HEADERS:
                continue
            if name in found:
                raise RecordRejected("contract", f"header {name} appears twice")
            try:
                found[name] = raw.decode()
            except UnicodeDecodeError as exc:
                raise RecordRejected("contract", f"header {name} is not UTF-8") from exc
        _expect(found, CE_SPECVERSION, SPEC_VERSION)
        _expect(found, CE_TYPE, FEATURES_UPDATED)
        event_id = _attribute(found, CE_ID, 256)
        _attribute(found, CE_SOURCE, 512)
        moment = _attribute(found, CE_TIME, 64)
        try:
            _moment.decode(msgspec.json.encode(moment))
        except msgspec.DecodeError as exc:
            raise RecordRejected(
                "contract", f"header {CE_TIME} is not an RFC 3339 time with an offset: {moment!r}"
            ) from exc
        content_type = found.get(CONTENT_TYPE_HEADER)
        if content_type is not None:
            media = content_type.partition(";")[0].strip().lower()
            if media != CONTENT_TYPE:
                raise RecordRejected(
                    "contract",
                    f"header {CONTENT_TYPE_HEADER} is {content_type!r}, not {CONTENT_TYPE}",
                )
        return event_id


def _expect(headers: Mapping[str, str], name: str, expected: str) -> None:
    value = headers.get(name)
    if value is None:
        raise RecordRejected("contract", f"header {name} is missing")
    if value != expected:
        raise RecordRejected("contract", f"header {name} is {value!r}, not {expected!r}")


def _attribute(headers: Mapping[str, str], name: str, max_length: int) -> str:
    value = headers.get(name)
    if not value:
        raise RecordRejected("contract", f"header {name} is missing or empty")
    if len(value) > max_length:
        raise RecordRejected("contract", f"header {name} is longer than {max_length} characters")
    if CONTROL_CHARACTER.search(value):
        raise RecordRejected("contract", f"header {name} holds control characters")
    return value


def decode_backfill_line(
    line: bytes,
    registry: Registry,
    *,
    schema_versions: Collection[int] = (),
    clock: Clock = time.time,
) -> Decoded:
    """The change one line of a backfill file makes.

    The line is a feature-update event in CloudEvents structured JSON mode. Its change
    has channel ``backfill``, sequence 0 and no stream position, so it never wins over
    a value of the same event time that came through the stream. A blank line makes
    no change.

    Args:
        line: one line of the file.
        registry: the checked registry.
        schema_versions: the schema versions to accept; empty accepts any.
        clock: seconds since the epoch, to refuse event times from the future.

    Raises:
        RecordRejected: the line fails the contract or the registry.
    """
    if not line.strip():
        return Decoded(changes=())
    checker = _UpdateChecker(registry, schema_versions, clock)
    try:
        event = _structured.decode(line)
    except msgspec.ValidationError as exc:
        data = _data_of(line)
        if data is not None:
            checker.parse(data, "$.data")
        raise RecordRejected("contract", _rejected_at(exc, "$")) from exc
    except msgspec.DecodeError as exc:
        raise RecordRejected("undecodable", f"the line is not JSON: {exc}") from exc
    for attribute in ("id", "source"):
        if CONTROL_CHARACTER.search(getattr(event, attribute)):
            raise RecordRejected("contract", f"control characters are refused - at `$.{attribute}`")
    change = checker.change(
        event.data, event_id=event.id, channel="backfill", sequence=0, stream=None
    )
    return Decoded(changes=(change,))


_NULL = msgspec.Raw(b"null")


class _Data(msgspec.Struct):
    data: msgspec.Raw = _NULL


_data = msgspec.json.Decoder(_Data)


def _data_of(line: bytes) -> bytes | None:
    """The raw ``data`` of a structured event, to tell a broken update from a broken envelope."""
    try:
        raw = _data.decode(line).data
    except msgspec.DecodeError:
        return None
    data = bytes(raw)
    return None if data == b"null" else data


# Debezium change events.

_OPS_WRITING = frozenset({"c", "u", "r"})
_OPS = _OPS_WRITING | {"d"}

# Kafka Connect schema types a column of each dtype may be declared with. The JSON
# converter names FLOAT32 and FLOAT64 "float" and "double" (its JsonSchema); the Connect
# type names themselves are taken too.
_FITS: dict[DType, frozenset[str]] = {
    "int64": frozenset({"int8", "int16", "int32", "int64"}),
    "float64": frozenset({"float", "double", "float32", "float64"}),
    "bool": frozenset({"boolean"}),
    "string": frozenset({"string"}),
}
_DECIMALS = frozenset(
    {"org.apache.kafka.connect.data.Decimal", "io.debezium.data.VariableScaleDecimal"}
)


class _ConnectField(msgspec.Struct):
    """A Kafka Connect schema as the JSON converter writes it (what is read of it)."""

    type: str
    field: str | None = None
    name: str | None = None
    fields: list[_ConnectField] | None = None


class _Source(msgspec.Struct):
    """A change event's ``source`` block (what is read of it)."""

    connector: str
    name: str
    ts_ms: int
    db: str
    snapshot: str | bool | None = None
    schema: str | None = None
    table: str | None = None
    txId: int | None = None
    lsn: int | None = None


@dataclass(frozen=True, slots=True)
class _Table:
    """A table mapping, worked out once."""

    mapping: TableMapping
    schema: str | None
    name: str
    ids: EntityIds
    columns: dict[str, tuple[str, DType]]
    features: tuple[str, ...]

    @classmethod
    def of(cls, mapping: TableMapping, registry: Registry) -> _Table:
        schema, _, name = mapping.table.rpartition(".")
        return cls(
            mapping=mapping,
            schema=schema or None,
            name=name,
            ids=registry.ids[mapping.entity],
            columns={c: (m.feature, m.dtype) for c, m in mapping.columns.items()},
            features=tuple(m.feature for m in mapping.columns.values()),
        )


class _Origin(msgspec.Struct, frozen=True, gc=False):
    """Where a change came from and where it sits in order."""

    event_time_ms: int
    sequence: int
    lsn: int | None
    source_system: str
    change: ChangePosition | None


class _ChangeEvents:
    """Debezium change events of the tables one stream maps."""

    def __init__(self, stream: Stream, registry: Registry, clock: Clock) -> None:
        self._stream = stream
        self._clock = clock
        self._tables = [_Table.of(mapping, registry) for mapping in stream.tables]
        self._qualified = {f"{t.schema}.{t.name}": t for t in self._tables if t.schema}
        self._bare = {t.name: t for t in self._tables if t.schema is None}
        # Per partition, the offset and key of the last delete decoded: the tombstone
        # that follows it carries nothing new, and its Kafka timestamp is later than the
        # commit, so as a deletion of its own it could hide a row inserted again since.
        self._last_delete: dict[int, tuple[int, bytes | None]] = {}

    def decode(self, record: RawRecord) -> Decoded:
        if record.value is None:
            return self._tombstone(record, "a tombstone")
        try:
            value = _json.decode(record.value)
        except msgspec.DecodeError as exc:
            raise RecordRejected("undecodable", f"the value is not JSON: {exc}") from exc
        schema, payload, root = _unwrap(value)
        if payload is None:
            # ExtractNewRecordState's default rewrites a delete to a null value.
            return self._tombstone(record, "a null value")
        if not isinstance(payload, dict):
            raise RecordRejected("contract", f"a change event is a JSON object - at `{root}`")
        if "op" in payload and "source" in payload:
            return self._enveloped(record, schema, payload, root)
        return self._flattened(record, schema, payload, root)

    def _enveloped(
        self, record: RawRecord, schema: Any, payload: dict[str, Any], root: str
    ) -> Decoded:
        op = payload["op"]
        if not isinstance(op, str) or op not in _OPS:
            raise RecordRejected("unsupported_op", _unsupported(op) + f" - at `{root}.op`")
        try:
            source = msgspec.convert(payload["source"], _Source)
        except msgspec.ValidationError as exc:
            raise RecordRejected("contract", _rejected_at(exc, f"{root}.source")) from exc
        table = self._table(source.schema, source.table, f"{root}.source.table")
        origin = self._origin(record, source, table)
        if op == "d":
            before = payload.get("before")
            image = before if isinstance(before, dict) else {}
            return self._deleted(record, table, image, origin)
        after = payload.get("after")
        if not isinstance(after, dict):
            raise RecordRejected("contract", f"op {op!r} needs the row - at `{root}.after`")
        declared = _declared(schema, "after")
        return self._written(record, table, after, declared, origin, metadata=False)

    def _flattened(self, record: RawRecord, schema: Any, row: dict[str, Any], root: str) -> Decoded:
        op = row.get("__op")
        if op is not None and (not isinstance(op, str) or op not in _OPS):
            raise RecordRejected("unsupported_op", _unsupported(op) + f" - at `{root}.__op`")
        table = self._table(
            _text(row, "__schema", root), _text(row, "__table", root), f"{root}.__table"
        )
        committed = row.get("__source_ts_ms")
        if not _is_int(committed):
            raise RecordRejected(
                "contract",
                "a flattened change needs its commit time: add source.ts_ms to the "
                f"ExtractNewRecordState add.fields - at `{root}.__source_ts_ms`",
            )
        lsn = row.get("__lsn", row.get("__source_lsn"))
        source = _Source(
            connector=_text(row, "__connector", root) or "debezium",
            name=_text(row, "__name", root) or "",
            ts_ms=committed,
            db=_text(row, "__db", root) or _text(row, "__source_db", root) or "",
            snapshot=row.get("__snapshot"),
            schema=_text(row, "__schema", root) or table.schema,
            table=_text(row, "__table", root) or table.name,
            txId=_int_or_none(row.get("__txId")),
            lsn=_int_or_none(lsn),
        )
        origin = self._origin(record, source, table)
        if op == "d" or row.get("__deleted") in ("true", True):
            return self._deleted(record, table, row, origin)
        return self._written(record, table, row, _declared(schema, None), origin, metadata=True)

    def _table(self, schema: str | None, name: str | None, at: str) -> _Table:
        """The mapping of a change's table: ``schema.table``, else ``table``."""
        if name is None:
            if len(self._tables) == 1:
                return self._tables[0]
            raise RecordRejected("contract", f"the change names no table - at `{at}`")
        found = self._qualified.get(f"{schema}.{name}") if schema else None
        found = found or self._bare.get(name)
        if found is None and schema is None:
            named = [t for t in self._tables if t.name == name]
            found = named[0] if len(named) == 1 else None
        if found is None:
            shown = f"{schema}.{name}" if schema else name
            raise RecordRejected(
                "contract", f"table {shown} is not mapped by stream {self._stream.name} - at `{at}`"
            )
        return found

    def _origin(self, record: RawRecord, source: _Source, table: _Table) -> _Origin:
        _future(source.ts_ms, self._clock, "source.ts_ms")
        for text in (source.connector, source.name, source.db, source.schema, source.table):
            if text is not None and CONTROL_CHARACTER.search(text):
                raise RecordRejected("contract", "control characters in the change's source")
        return _Origin(
            event_time_ms=source.ts_ms,
            sequence=record.offset if source.lsn is None else source.lsn,
            lsn=source.lsn,
            source_system=source.name or self._stream.name,
            change=ChangePosition(
                connector=source.connector,
                name=source.name,
                database=source.db,
                schema=source.schema if source.schema is not None else table.schema,
                table=source.table if source.table is not None else table.name,
                lsn=source.lsn,
                tx_id=source.txId,
                snapshot=source.snapshot not in (None, False, "false"),
            ),
        )

    def _written(
        self,
        record: RawRecord,
        table: _Table,
        row: dict[str, Any],
        declared: dict[str, _ConnectField] | None,
        origin: _Origin,
        *,
        metadata: bool,
    ) -> Decoded:
        values: dict[str, FeatureScalar] = {}
        deleted: list[str] = []
        for column, (feature, dtype) in table.columns.items():
            if declared is not None:
                _fits(column, declared.get(column), feature, dtype)
            if column not in row:
                raise RecordRejected(
                    "missing_column", f"column {column!r} is missing from the row", feature
                )
            raw = row[column]
            if raw is None:
                # NULL in the source: the feature has no value now.
                deleted.append(feature)
                continue
            values[feature] = _column_value(column, raw, feature, dtype)
        entity_id = self._entity_id(record, table, row)
        key = table.mapping.key_column
        extra = [
            name
            for name in (declared if declared is not None else row)
            if name not in table.columns
            and name != key
            and not (metadata and name.startswith("__"))
        ]
        return Decoded(
            changes=(self._change(record, table, entity_id, values, deleted, origin),),
            extra_fields=tuple(extra),
        )

    def _deleted(
        self, record: RawRecord, table: _Table, image: dict[str, Any], origin: _Origin
    ) -> Decoded:
        entity_id = self._entity_id(record, table, image)
        self._last_delete[record.partition] = (record.offset, record.key)
        return Decoded(
            changes=(self._change(record, table, entity_id, {}, table.features, origin),)
        )

    def _tombstone(self, record: RawRecord, what: str) -> Decoded:
        """A delete known only by its key: the row is gone, as of the record's timestamp."""
        if record.key is None:
            raise RecordRejected("contract", f"{what} without a key names no row")
        if record.timestamp_ms < 0:
            raise RecordRejected("contract", f"{what} without a timestamp has no time to delete at")
        last = self._last_delete.get(record.partition)
        if last == (record.offset - 1, record.key):
            return Decoded(changes=())
        key, key_schema = self._key(record)
        table = self._key_table(key, key_schema)
        entity_id = self._entity_id(record, table, {})
        self._last_delete[record.partition] = (record.offset, record.key)
        origin = _Origin(
            event_time_ms=record.timestamp_ms,
            sequence=record.offset,
            lsn=None,
            source_system=self._stream.name,
            change=None,
        )
        return Decoded(
            changes=(self._change(record, table, entity_id, {}, table.features, origin),)
        )

    def _key(self, record: RawRecord) -> tuple[Any, Any]:
        """The record key's payload and its schema, if it has a key."""
        if record.key is None:
            return None, None
        try:
            key = _json.decode(record.key)
        except msgspec.DecodeError as exc:
            raise RecordRejected("undecodable", f"the key is not JSON: {exc}") from exc
        schema, payload, _ = _unwrap(key)
        return payload, schema

    def _key_table(self, key: Any, key_schema: Any) -> _Table:
        """The table a tombstone is for: the only one, the key schema's, or the key's column."""
        if len(self._tables) == 1:
            return self._tables[0]
        name = key_schema.get("name") if isinstance(key_schema, dict) else None
        if isinstance(name, str) and name.endswith(".Key"):
            # Debezium names key schemas <topic prefix>.<schema>.<table>.Key.
            parts = name.removesuffix(".Key").split(".")
            schema = parts[-2] if len(parts) >= 3 else None
            return self._table(schema, parts[-1], "key.schema.name")
        if isinstance(key, dict):
            keyed = [t for t in self._tables if t.mapping.key_column in key]
            if len(keyed) == 1:
                return keyed[0]
        raise RecordRejected("contract", "cannot tell which mapped table the key is of")

    def _entity_id(self, record: RawRecord, table: _Table, row: dict[str, Any]) -> str:
        column = table.mapping.key_column
        key, _ = self._key(record)
        if isinstance(key, dict):
            raw = key.get(column, row.get(column))
        elif key is not None:
            raw = key  # a key an SMT reduced to the column's value
        else:
            raw = row.get(column)
        if raw is None:
            raise RecordRejected(
                "missing_column", f"key column {column!r} is in neither the key nor the row"
            )
        if isinstance(raw, str):
            entity_id = raw
        elif _is_int(raw):
            entity_id = str(raw)
        else:
            raise RecordRejected(
                "column_type", f"key column {column!r} holds {type(raw).__name__}, not an id"
            )
        problem = table.ids.problem(entity_id)
        if problem is not None:
            raise RecordRejected("entity", f"{problem} (key column {column!r})")
        return entity_id

    def _change(
        self,
        record: RawRecord,
        table: _Table,
        entity_id: str,
        values: dict[str, FeatureScalar],
        deleted: Sequence[str],
        origin: _Origin,
    ) -> FeatureChange:
        position = origin.change
        if position is not None:
            where = ".".join(
                part for part in (position.database, position.schema, position.table) if part
            )
            name = position.name
        else:
            where, name = table.mapping.table, self._stream.name
        if origin.lsn is not None:
            source_ref = f"{where}:{origin.lsn}"
            at = str(origin.lsn)
        else:
            at = f"{record.topic}/{record.partition}/{record.offset}"
            source_ref = f"{where}@{at}"
        digest = hashlib.blake2b("\x1f".join((name, where, at, entity_id)).encode(), digest_size=12)
        return FeatureChange(
            entity=table.mapping.entity,
            entity_id=entity_id,
            values=values,
            deleted=tuple(deleted),
            event_time_ms=origin.event_time_ms,
            effective_time_ms=None,
            sequence=origin.sequence,
            event_id=f"cdc_{digest.hexdigest()}",
            channel="cdc",
            source_system=origin.source_system,
            source_ref=source_ref,
            stream=StreamPosition(
                topic=record.topic, partition=record.partition, offset=record.offset
            ),
            change=position,
        )


def _unwrap(value: Any) -> tuple[Any, Any, str]:
    """(schema, payload, path of the payload) of a JSON converter value."""
    if isinstance(value, dict) and value.keys() == {"schema", "payload"}:
        return value["schema"], value["payload"], "$.payload"
    return None, value, "$"


def _declared(schema: Any, image: str | None) -> dict[str, _ConnectField] | None:
    """The declared columns of a row: of the envelope's ``image`` field, or the value's own."""
    if schema is None:
        return None
    try:
        struct: _ConnectField | None = msgspec.convert(schema, _ConnectField)
    except msgspec.ValidationError as exc:
        raise RecordRejected("contract", _rejected_at(exc, "$.schema")) from exc
    if image is not None and struct is not None:
        struct = next((f for f in struct.fields or () if f.field == image), None)
    if struct is None or struct.type != "struct":
        raise RecordRejected(
            "contract", f"the schema declares no row for {image or 'the value'} - at `$.schema`"
        )
    return {f.field: f for f in struct.fields or () if f.field is not None}


def _fits(column: str, declared: _ConnectField | None, feature: str, dtype: DType) -> None:
    if declared is None:
        raise RecordRejected(
            "missing_column", f"column {column!r} is missing from the row's schema", feature
        )
    if declared.name in _DECIMALS:
        raise RecordRejected(
            "column_type",
            f"column {column!r} is a decimal ({declared.name}); a {dtype} feature needs the "
            "connector's decimal.handling.mode=double",
            feature,
        )
    if declared.type not in _FITS[dtype]:
        raise RecordRejected(
            "column_type",
            f"column {column!r} is declared {declared.type}, feature {feature!r} is {dtype}",
            feature,
        )


def _column_value(column: str, raw: Any, feature: str, dtype: DType) -> FeatureScalar:
    try:
        value = coerce(raw, dtype)
    except TypeError as exc:
        raise RecordRejected("column_type", f"column {column!r}: {exc}", feature) from exc
    if isinstance(value, str) and "\x00" in value:
        raise RecordRejected(
            "contract", f"column {column!r}: a NUL character cannot be stored", feature
        )
    return value


def _unsupported(op: Any) -> str:
    if op == "t":
        return "a truncate names no rows; the table's features are left as they are"
    return f"op {op!r} is not a row change scoregate applies"


def _text(row: Mapping[str, Any], name: str, root: str) -> str | None:
    value = row.get(name)
    if value is None or isinstance(value, str):
        return value
    raise RecordRejected("contract", f"expected a string - at `{root}.{name}`")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or_none(value: Any) -> int | None:
    return value if _is_int(value) else None
