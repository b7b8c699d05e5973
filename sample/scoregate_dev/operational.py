r"""A sample operational system: the upstream services and database behind the sample registry.

It keeps the sample registry's features changing on the broker, as a deployment's own
systems would:

- a transaction aggregator and a customer profile service send scoregate's
  feature-update events (CloudEvents in Kafka binary mode, keyed by the customer id) to
  the registry's ``feature_update`` stream;
- the merchant risk database's table, which the registry's ``debezium`` stream maps,
  reaches the broker as Debezium's PostgreSQL connector writes it with the JSON
  converter (keyed by the row's primary key): a snapshot of every row (``op: r``) at
  start, then updates (``u``), now and then a delete (``d``) followed by its tombstone,
  and the row created again (``c``) later.

Values start from what the sample source APIs answer for the same entity
(:mod:`scoregate_dev.sample_sources`), so a source fallback and the stream agree, and
drift from there as transactions happen.

Run it beside a stack with::

    python -m scoregate_dev.operational --bootstrap 127.0.0.1:9092 \
        --registry registry.toml --rate 50

The dev stack runs it in-process (:class:`OperationalSystem`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

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
)
from contracts.registry import Stream, TableMapping
from gateway.registry import Registry, parse_registry
from scoregate_dev.sample_sources import merchant_risk_record, profile_record, txn_stats_record

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time``)."""

Headers = list[tuple[str, bytes]]

TXN_FEATURES = ("txn_count_30m", "txn_amount_sum_24h", "distinct_merchants_7d")
"""What the transaction aggregator computes per customer."""
PROFILE_FEATURES = ("account_age_days", "kyc_level", "country_risk")
"""What the customer profile service holds per customer."""
MERCHANT_FEATURE = "chargeback_rate_90d"
"""The merchant feature the risk database's table feeds."""

DEBEZIUM_VERSION = "3.0.8.Final"
_MERCHANT_CATEGORIES = ("5411", "5812", "5732", "5999", "7995", "4829", "5944")
_FIRST_LSN = 24_023_128


class Record(NamedTuple):
    """One Kafka record to produce: topic, key, value (None for a tombstone), headers."""

    topic: str
    key: bytes
    value: bytes | None
    headers: Headers


@dataclass
class _Customer:
    txn_count: int
    amount_sum: float
    merchants: int
    age_days: int
    kyc: int
    country_risk: float
    window: int = 0
    profile_version: int = 1


@dataclass
class _Merchant:
    name: str
    category: str
    chargeback_rate: float
    category_risk: float
    deleted: bool = False


@dataclass(frozen=True)
class _CustomerStream:
    stream: Stream
    key: str
    schema_version: int | None
    txn: tuple[str, ...]
    profile: tuple[str, ...]


@dataclass(frozen=True)
class _MerchantTable:
    stream: Stream
    mapping: TableMapping
    schema: str
    table: str
    rate_column: str


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class SampleEvents:
    """Builds the records of the sample operational system; sends nothing itself.

    Which topics, entity key, table and columns the records use comes from the
    registry's streams: the first ``feature_update`` stream carries the customer
    features the sample knows, and the first ``debezium`` table of the ``merchant``
    entity whose columns feed ``chargeback_rate_90d`` is the merchant risk table. A
    registry without one of them gets no records of that kind.

    Args:
        registry: the checked registry.
        customers: the customer ids to emit updates for.
        merchants: the merchant ids whose rows the table holds.
        seed: seeds the drift, so a run can be repeated.
        with_schema: write change events with the JSON converter's ``schema`` envelope
            (``value.converter.schemas.enable=true``); without it, payloads alone.
        cdc_share: the share of steps that change the merchants table.
        delete_share: the share of table changes that delete a row.
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        registry: Registry,
        customers: Sequence[str],
        merchants: Sequence[str],
        *,
        seed: int = 0,
        with_schema: bool = False,
        cdc_share: float = 0.2,
        delete_share: float = 0.03,
        clock: Clock = time.time,
    ) -> None:
        self._clock = clock
        # Simulated data, not security: a seeded generator keeps runs repeatable.
        self._rng = random.Random(seed)  # noqa: S311
        self._with_schema = with_schema
        self._cdc_share = cdc_share
        self._delete_share = delete_share
        self._customer_stream = _customer_stream(registry) if customers else None
        self._table = _merchant_table(registry) if merchants else None
        now = datetime.fromtimestamp(clock(), UTC)
        self.customers = {c: _customer_state(c, now) for c in customers}
        self.merchants = {m: _merchant_state(m, now, self._rng) for m in merchants}
        self._customer_ids = list(self.customers)
        self._merchant_ids = list(self.merchants)
        self._lsn = _FIRST_LSN + self._rng.randrange(1_000_000)
        self._tx_id = 500 + self._rng.randrange(10_000)
        self._last_commit_lsn = self._lsn

    @property
    def topics(self) -> list[str]:
        """The topics the records go to."""
        found = [self._customer_stream.stream.topic] if self._customer_stream else []
        return found + ([self._table.stream.topic] if self._table else [])

    def snapshot(self) -> list[Record]:
        """What the systems send when they start.

        Every customer's aggregates and profile as one feature update each, and
        Debezium's initial snapshot of the table: one ``r`` per row, all at one LSN.
        """
        records: list[Record] = []
        for customer in self._customer_ids:
            records += [self.txn_update(customer, step=False), self.profile_update(customer)]
        if self._table is not None and self._merchant_ids:
            now_ms = int(self._clock() * 1000)
            lsn = self._next_lsn()
            tx_id = self._next_tx()
            last = len(self._merchant_ids) - 1
            for i, merchant in enumerate(self._merchant_ids):
                marker = "first" if i == 0 else "last" if i == last else "true"
                row = self._row(merchant)
                source = self._source(now_ms, lsn, tx_id, snapshot=marker)
                records.append(self._change(merchant, "r", None, row, source, now_ms))
        return records

    def step(self) -> list[Record]:
        """The next thing that happens.

        Mostly a customer's aggregates move on; now and then a profile changes or a row
        of the merchants table does.
        """
        rng = self._rng
        if self._table is not None and self._merchant_ids and rng.random() < self._cdc_share:
            return self.merchant_step()
        if not self._customer_ids or self._customer_stream is None:
            return []
        customer = rng.choice(self._customer_ids)
        if rng.random() < 0.05:
            return [self.profile_update(customer, change=True)]
        return [self.txn_update(customer)]

    def txn_update(self, customer: str, *, step: bool = True) -> Record:
        """A feature update of a customer's transaction aggregates.

        Args:
            customer: the customer.
            step: move the aggregates on first, as one aggregation window does.
        """
        state = self.customers[customer]
        if step:
            _drift_txn(state, self._rng)
        state.window += 1
        values: dict[str, Any] = {
            "txn_count_30m": state.txn_count,
            "txn_amount_sum_24h": state.amount_sum,
            "distinct_merchants_7d": state.merchants,
        }
        return self.feature_update(
            customer,
            values,
            source="/sample/txn-aggregator",
            source_system="txn-aggregator",
            source_ref=f"txn-window:{customer}:{state.window}",
            transform="txn_window_agg_v1",
        )

    def profile_update(self, customer: str, *, change: bool = False) -> Record:
        """A feature update of a customer's profile, effective from when it was verified.

        Args:
            customer: the customer.
            change: change the profile first (a KYC upgrade or a new country score).
        """
        state = self.customers[customer]
        if change:
            if state.kyc < 3 and self._rng.random() < 0.5:
                state.kyc += 1
            else:
                noise = self._rng.gauss(0.0, 0.03)
                state.country_risk = round(min(1.0, max(0.0, state.country_risk + noise)), 4)
            state.profile_version += 1
        values: dict[str, Any] = {
            "account_age_days": state.age_days,
            "kyc_level": state.kyc,
            "country_risk": state.country_risk,
        }
        # The profile service publishes after the verification that made it true.
        effective = self._clock() - self._rng.uniform(0.5, 30.0)
        return self.feature_update(
            customer,
            values,
            source="/sample/customer-profile",
            source_system="customer-profile",
            source_ref=f"profile:{customer}:v{state.profile_version}",
            effective_time=effective,
        )

    def feature_update(
        self,
        customer: str,
        values: Mapping[str, Any],
        *,
        source: str,
        source_system: str,
        source_ref: str,
        transform: str | None = None,
        effective_time: float | None = None,
        event_id: str | None = None,
    ) -> Record:
        """A feature-update CloudEvent in binary mode for the customer stream.

        Only the features the registry knows are sent.

        Args:
            customer: the customer the values are about.
            values: feature values by name.
            source: the CloudEvents source.
            source_system: the lineage's source system.
            source_ref: the upstream record.
            transform: the transform that derived the values.
            effective_time: when the values became authoritative (seconds since the epoch).
            event_id: the CloudEvent id; a new one if None.
        """
        target = self._require_customer_stream()
        now = self._clock()
        known = set(target.txn) | set(target.profile)
        lineage: dict[str, Any] = {"source_system": source_system, "source_ref": source_ref}
        if target.schema_version is not None:
            lineage["schema_version"] = target.schema_version
        if transform is not None:
            lineage["transform"] = transform
        data: dict[str, Any] = {
            "entities": {target.key: customer},
            "features": {name: value for name, value in values.items() if name in known},
            "event_time": _iso(now),
            "lineage": lineage,
        }
        if effective_time is not None:
            data["effective_time"] = _iso(effective_time)
        headers: Headers = [
            (CE_SPECVERSION, SPEC_VERSION.encode()),
            (CE_ID, (event_id or uuid.uuid4().hex).encode()),
            (CE_SOURCE, source.encode()),
            (CE_TYPE, FEATURES_UPDATED.encode()),
            (CE_TIME, _iso(now).encode()),
            (CONTENT_TYPE_HEADER, CONTENT_TYPE.encode()),
        ]
        return Record(target.stream.topic, customer.encode(), _compact(data), headers)

    def merchant_step(self) -> list[Record]:
        """One change to the merchants table: a row created again, deleted or updated."""
        rng = self._rng
        gone = [m for m, state in self.merchants.items() if state.deleted]
        if gone and rng.random() < 0.5:
            return [self.merchant_change(rng.choice(gone))]
        merchant = rng.choice(self._merchant_ids)
        if not gone and not self.merchants[merchant].deleted and rng.random() < self._delete_share:
            return self.merchant_delete(merchant)
        return [self.merchant_change(merchant)]

    def merchant_change(self, merchant: str) -> Record:
        """An update of the merchant's row, or its creation if it was deleted."""
        state = self.merchants[merchant]
        op = "c" if state.deleted else "u"
        state.deleted = False
        drift = math.exp(self._rng.gauss(0.0, 0.05))
        state.chargeback_rate = round(min(0.2, max(0.0, state.chargeback_rate * drift)), 5)
        now_ms = int(self._clock() * 1000)
        source = self._source(now_ms, self._next_lsn(), self._next_tx())
        # REPLICA IDENTITY DEFAULT: an update carries no before-image.
        return self._change(merchant, op, None, self._row(merchant), source, now_ms)

    def merchant_delete(self, merchant: str) -> list[Record]:
        """The delete of the merchant's row and the tombstone Debezium sends after it."""
        self.merchants[merchant].deleted = True
        now_ms = int(self._clock() * 1000)
        source = self._source(now_ms, self._next_lsn(), self._next_tx())
        table = self._require_table()
        # REPLICA IDENTITY DEFAULT: the before-image of a delete is the key alone.
        before = {table.mapping.key_column: merchant}
        delete = self._change(merchant, "d", before, None, source, now_ms)
        return [delete, Record(delete.topic, delete.key, None, [])]

    def _require_customer_stream(self) -> _CustomerStream:
        if self._customer_stream is None:
            raise RuntimeError("the registry has no feature_update stream for customers")
        return self._customer_stream

    def _require_table(self) -> _MerchantTable:
        if self._table is None:
            raise RuntimeError("the registry maps no merchant table through Debezium")
        return self._table

    def _next_lsn(self) -> int:
        self._last_commit_lsn = self._lsn
        self._lsn += self._rng.randint(56, 4096)
        return self._lsn

    def _next_tx(self) -> int:
        self._tx_id += 1
        return self._tx_id

    def _row(self, merchant: str) -> dict[str, Any]:
        table = self._require_table()
        state = self.merchants[merchant]
        return {
            table.mapping.key_column: merchant,
            "name": state.name,
            "category": state.category,
            table.rate_column: state.chargeback_rate,
            "category_risk": state.category_risk,
            # io.debezium.time.MicroTimestamp: microseconds since the epoch.
            "updated_at": int(self._clock() * 1_000_000),
        }

    def _source(
        self, commit_ms: int, lsn: int, tx_id: int, snapshot: str = "false"
    ) -> dict[str, Any]:
        table = self._require_table()
        return {
            "version": DEBEZIUM_VERSION,
            "connector": "postgresql",
            "name": table.stream.topic.split(".", 1)[0],
            "ts_ms": commit_ms,
            "ts_us": commit_ms * 1000,
            "ts_ns": commit_ms * 1_000_000,
            "snapshot": snapshot,
            "db": "merchant_risk",
            "sequence": json.dumps([str(self._last_commit_lsn), str(lsn)]),
            "schema": table.schema,
            "table": table.table,
            "txId": tx_id,
            "lsn": lsn,
            "xmin": None,
        }

    def _change(
        self,
        merchant: str,
        op: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        source: dict[str, Any],
        commit_ms: int,
    ) -> Record:
        table = self._require_table()
        # The connector sees the commit a few milliseconds after it happens.
        seen_ms = commit_ms + self._rng.randint(1, 15)
        payload = {
            "before": before,
            "after": after,
            "source": source,
            "transaction": None,
            "op": op,
            "ts_ms": seen_ms,
            "ts_us": seen_ms * 1000,
            "ts_ns": seen_ms * 1_000_000,
        }
        key: dict[str, Any] = {table.mapping.key_column: merchant}
        if self._with_schema:
            prefix = f"{source['name']}.{table.schema}.{table.table}"
            key = {"schema": _key_schema(table, prefix), "payload": key}
            value = {"schema": _envelope_schema(table, prefix), "payload": payload}
            return Record(table.stream.topic, _compact(key), _compact(value), [])
        return Record(table.stream.topic, _compact(key), _compact(payload), [])


def _customer_stream(registry: Registry) -> _CustomerStream | None:
    stream = next((s for s in registry.file.streams if s.format == "feature_update"), None)
    entity = registry.entities.get("customer")
    if stream is None or entity is None:
        return None

    def known(names: Iterable[str]) -> tuple[str, ...]:
        return tuple(
            n for n in names if n in registry.features and registry.features[n].entity == "customer"
        )

    versions = stream.schema_versions
    return _CustomerStream(
        stream=stream,
        key=entity.key,
        schema_version=max(versions) if versions else 1,
        txn=known(TXN_FEATURES),
        profile=known(PROFILE_FEATURES),
    )


def _merchant_table(registry: Registry) -> _MerchantTable | None:
    for stream in registry.file.streams:
        if stream.format != "debezium":
            continue
        for mapping in stream.tables:
            columns = [c for c, m in mapping.columns.items() if m.feature == MERCHANT_FEATURE]
            if mapping.entity == "merchant" and columns:
                schema, _, table = mapping.table.rpartition(".")
                return _MerchantTable(stream, mapping, schema or "public", table, columns[0])
    return None


def _customer_state(customer: str, now: datetime) -> _Customer:
    txn = txn_stats_record(customer, now)
    profile = profile_record(customer, now)
    return _Customer(
        txn_count=txn.txn_count_30m,
        amount_sum=txn.txn_amount_sum_24h,
        merchants=txn.distinct_merchants_7d,
        age_days=profile.account_age_days,
        kyc=profile.kyc_level,
        country_risk=profile.country_risk,
    )


def _merchant_state(merchant: str, now: datetime, rng: random.Random) -> _Merchant:
    risk = merchant_risk_record(merchant, now)
    return _Merchant(
        name=f"Sample merchant {merchant}",
        category=rng.choice(_MERCHANT_CATEGORIES),
        chargeback_rate=risk.chargeback_rate_90d,
        category_risk=risk.category_risk,
    )


def _drift_txn(state: _Customer, rng: random.Random) -> None:
    """Move a customer's aggregates on by one window: payments in, old ones out."""
    arrivals = rng.choices((0, 1, 2), weights=(0.6, 0.3, 0.1))[0]
    departures = min(state.txn_count, rng.choices((0, 1), weights=(0.6, 0.4))[0])
    state.txn_count += arrivals - departures
    spent = sum(rng.lognormvariate(math.log(35.0), 1.0) for _ in range(arrivals))
    # The 24-hour window lets go of older payments as new ones come in.
    state.amount_sum = round(max(0.0, state.amount_sum * 0.97 + spent), 2)
    if arrivals and rng.random() < 0.3:
        state.merchants += 1
    elif state.merchants > 1 and rng.random() < 0.05:
        state.merchants -= 1


def _field(kind: str, column: str, *, optional: bool = True, **more: Any) -> dict[str, Any]:
    return {"type": kind, "optional": optional, **more, "field": column}


def _key_schema(table: _MerchantTable, prefix: str) -> dict[str, Any]:
    return {
        "type": "struct",
        "fields": [_field("string", table.mapping.key_column, optional=False)],
        "optional": False,
        "name": f"{prefix}.Key",
    }


def _row_schema(table: _MerchantTable, prefix: str, image: str) -> dict[str, Any]:
    # PostgreSQL `double precision` is FLOAT64, which the JSON converter writes "double".
    return {
        "type": "struct",
        "fields": [
            _field("string", table.mapping.key_column, optional=False),
            _field("string", "name"),
            _field("string", "category"),
            _field("double", table.rate_column),
            _field("double", "category_risk"),
            _field("int64", "updated_at", name="io.debezium.time.MicroTimestamp", version=1),
        ],
        "optional": True,
        "name": f"{prefix}.Value",
        "field": image,
    }


_SOURCE_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [
        _field("string", "version", optional=False),
        _field("string", "connector", optional=False),
        _field("string", "name", optional=False),
        _field("int64", "ts_ms", optional=False),
        _field(
            "string",
            "snapshot",
            name="io.debezium.data.Enum",
            version=1,
            parameters={
                "allowed": "true,first,first_in_data_collection,last_in_data_collection,"
                "last,false,incremental"
            },
            default="false",
        ),
        _field("string", "db", optional=False),
        _field("string", "sequence"),
        _field("int64", "ts_us"),
        _field("int64", "ts_ns"),
        _field("string", "schema", optional=False),
        _field("string", "table", optional=False),
        _field("int64", "txId"),
        _field("int64", "lsn"),
        _field("int64", "xmin"),
    ],
    "optional": False,
    "name": "io.debezium.connector.postgresql.Source",
    "version": 1,
    "field": "source",
}

_TRANSACTION_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [
        _field("string", "id", optional=False),
        _field("int64", "total_order", optional=False),
        _field("int64", "data_collection_order", optional=False),
    ],
    "optional": True,
    "name": "event.block",
    "version": 1,
    "field": "transaction",
}


def _envelope_schema(table: _MerchantTable, prefix: str) -> dict[str, Any]:
    return {
        "type": "struct",
        "fields": [
            _row_schema(table, prefix, "before"),
            _row_schema(table, prefix, "after"),
            _SOURCE_SCHEMA,
            _TRANSACTION_SCHEMA,
            _field("string", "op", optional=False),
            _field("int64", "ts_ms"),
            _field("int64", "ts_us"),
            _field("int64", "ts_ns"),
        ],
        "optional": False,
        "name": f"{prefix}.Envelope",
        "version": 2,
    }


class OperationalSystem:
    """Sends :class:`SampleEvents` to the broker.

    The snapshot goes at start, then ``rate`` steps a second, open loop: a slow broker
    does not slow the schedule down.

    Args:
        bootstrap: the broker's bootstrap address.
        registry: the checked registry whose streams name the topics.
        customers: the customer ids to keep fresh.
        merchants: the merchant ids in the risk table.
        rate: steps per second after the snapshot; 0 sends the snapshot alone.
        seed: seeds the drift.
        with_schema: write change events with the JSON converter's schema envelope.
    """

    def __init__(
        self,
        bootstrap: str,
        registry: Registry,
        customers: Sequence[str],
        merchants: Sequence[str],
        rate: float = 20.0,
        *,
        seed: int = 0,
        with_schema: bool = False,
    ) -> None:
        self.bootstrap = bootstrap
        self.events = SampleEvents(
            registry, customers, merchants, seed=seed, with_schema=with_schema
        )
        self.rate = rate
        self.sent = 0
        """Records the broker acknowledged."""
        self.failed = 0
        """Records the broker did not take."""
        self.positions: dict[TopicPartition, int] = {}
        """Per partition, the offset after the last record the broker acknowledged."""
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        """Connect, send the snapshot and wait for it, then keep sending in the background."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=False,
            acks="all",
            linger_ms=2,
            client_id="scoregate-dev-operational",
        )
        await producer.start()
        self._producer = producer
        await self.send(self.events.snapshot())
        if self.rate > 0:
            self._task = asyncio.create_task(self._run())

    async def send(self, records: Sequence[Record]) -> None:
        """Send ``records`` in order and wait until the broker has every one."""
        for record in records:
            await self._queue(record)
        await self.flush()

    async def flush(self) -> None:
        """Wait for every record sent so far to be acknowledged or refused."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _queue(self, record: Record) -> None:
        producer = self._require_producer()
        delivery = await producer.send(
            record.topic, record.value, key=record.key, headers=record.headers
        )
        self._pending.add(delivery)
        delivery.add_done_callback(self._delivered)

    def _delivered(self, delivery: asyncio.Future[Any]) -> None:
        self._pending.discard(delivery)
        if delivery.cancelled() or delivery.exception() is not None:
            self.failed += 1
            return
        metadata = delivery.result()
        self.sent += 1
        tp = TopicPartition(metadata.topic, metadata.partition)
        self.positions[tp] = max(self.positions.get(tp, 0), metadata.offset + 1)

    async def _run(self) -> None:
        interval = 1.0 / self.rate
        due = time.monotonic()
        while True:
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                for record in self.events.step():
                    await self._queue(record)
            except Exception as exc:  # the broker may be away; the schedule goes on
                self.failed += 1
                log.warning("the operational system could not send: %s", exc)

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the operational system is not started")
        return self._producer

    async def stop(self) -> None:
        """Stop sending; what was sent is flushed first."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._producer is not None:
            await self.flush()
            await self._producer.stop()
            self._producer = None


async def create_topics(bootstrap: str, topics: Iterable[str], partitions: int = 1) -> None:
    """Create ``topics`` with ``partitions`` each; a topic that exists is left as it is.

    The broker would create a missing topic on first use, but a consumer that
    subscribed before it existed may only notice it at its next metadata refresh.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1) for topic in topics])
    finally:
        await admin.close()


async def committed(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """The group's committed offset of each partition (0 where it has none)."""
    return {tp: (await consumer.committed(tp)) or 0 for tp in partitions}


async def until_ingested(
    bootstrap: str,
    group: str,
    positions: Mapping[TopicPartition, int],
    limit_s: float = 30.0,
    poll_s: float = 0.05,
) -> float:
    """Wait until the ingest group has committed at least ``positions``.

    A worker commits only once a batch is in Redis, so then every record before
    those offsets has been written (or dead-lettered).

    Args:
        bootstrap: the broker.
        group: the ingest workers' consumer group.
        positions: per partition, the offset to reach.
        limit_s: how long to wait at most.
        poll_s: how often to look.

    Returns:
        The seconds it took.

    Raises:
        TimeoutError: the group did not get there within ``limit_s``.
    """
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        async with asyncio.timeout(limit_s):
            while True:
                done = await committed(consumer, positions)
                if all(done[tp] >= offset for tp, offset in positions.items()):
                    return time.monotonic() - started
                await asyncio.sleep(poll_s)
    finally:
        await consumer.stop()


def load_for_streams(path: Path) -> Registry:
    """The registry at ``path``, whose URL placeholders may be unfilled.

    Only its entities, features and streams are read here, so the sample registry's
    template will do as well as the file the dev stack writes.
    """
    text = Template(path.read_text()).safe_substitute(
        sources_url="http://127.0.0.1:9", model_url="http://127.0.0.1:9"
    )
    return parse_registry(text.encode(), str(path))


async def _main(args: argparse.Namespace) -> int:
    registry = load_for_streams(args.registry)
    customers = [f"c-{i}" for i in range(1, args.customers + 1)]
    merchants = [f"m-{i}" for i in range(1, args.merchants + 1)]
    system = OperationalSystem(
        args.bootstrap,
        registry,
        customers,
        merchants,
        args.rate,
        seed=args.seed,
        with_schema=args.with_schema,
    )
    if args.create_topics:
        await create_topics(args.bootstrap, system.events.topics, args.partitions)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await system.start()
    log.info(
        "sent the snapshot (%d records) to %s; now %g steps/s",
        system.sent,
        ", ".join(system.events.topics),
        args.rate,
    )
    try:
        if args.seconds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.seconds)
        else:
            await stop.wait()
    finally:
        await system.stop()
    print(json.dumps({"sent": system.sent, "failed": system.failed}))
    return 1 if system.failed else 0


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sample operational system until interrupted.

    Args:
        argv: Command-line arguments without the program name; defaults to ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m scoregate_dev.operational",
        description="Keep the sample registry's features changing on the broker.",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("SCOREGATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="the broker (SCOREGATE_KAFKA_BOOTSTRAP)",
    )
    parser.add_argument(
        "--registry",
        type=Path,
        default=os.environ.get("SCOREGATE_REGISTRY"),
        required="SCOREGATE_REGISTRY" not in os.environ,
        help="the registry whose streams name the topics (SCOREGATE_REGISTRY)",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="steps per second")
    parser.add_argument("--customers", type=int, default=200, help="customers c-1 ... c-N")
    parser.add_argument("--merchants", type=int, default=20, help="merchants m-1 ... m-N")
    parser.add_argument("--seed", type=int, default=0, help="seeds the drift")
    parser.add_argument(
        "--with-schema",
        action="store_true",
        help="change events with the JSON converter's schema envelope",
    )
    parser.add_argument(
        "--create-topics", action="store_true", help="create the topics first (if missing)"
    )
    parser.add_argument("--partitions", type=int, default=1, help="partitions of new topics")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: never)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise SystemExit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
