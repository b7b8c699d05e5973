"""The ingest worker against the real broker and Redis: order, duplicates, crashes,
rebalances, dead letters, replay and backfill."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from gateway.deadline import Deadline
from gateway.features.online_store import OnlineStore
from gateway.ingest.worker import IngestSettings, Replay
from scoregate_dev.broker import LocalBroker
from tests.support.ingest import (
    Topics,
    create_topic,
    feature_update,
    produce,
    running,
    until,
)

pytestmark = pytest.mark.services

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


async def stored(online: OnlineStore, customer: str, feature: str = "txn_count_30m") -> Any:
    [found] = await online.read([("customer", customer, [feature])], Deadline(5))
    return found.get(feature)


async def value_of(online: OnlineStore, customer: str, feature: str = "txn_count_30m") -> Any:
    current = await stored(online, customer, feature)
    return None if current is None else current.value


async def committed(settings: IngestSettings, topic: str) -> list[int | None]:
    """The group's committed offset of every partition of ``topic``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.kafka_bootstrap,
        group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        return [await consumer.committed(TopicPartition(topic, p)) for p in partitions]
    finally:
        await consumer.stop()


def update(customer: str, count: int, at: datetime, **extra: Any) -> Any:
    return feature_update("customer_id", customer, {"txn_count_30m": count}, at, **extra)


async def test_out_of_order_and_repeated_events_leave_the_newest(
    ingest_settings: IngestSettings, topics: Topics, broker: LocalBroker, online: OnlineStore
) -> None:
    newest = update("c-1", 5, T0 + timedelta(seconds=2), event_id="ev-new")
    records = [
        update("c-1", 3, T0 + timedelta(seconds=1)),
        newest,
        update("c-1", 1, T0),  # late: older than what is stored
        newest,  # produced twice: a new offset, the same event
    ]
    await produce(broker.bootstrap, topics.updates, records)
    async with running(ingest_settings) as worker:
        await until(lambda: _settled(ingest_settings, topics.updates, 4))
        report = worker.report
    assert await value_of(online, "c-1") == 5
    assert (report.written, report.older, report.duplicate) == (2, 1, 1)
    current = await stored(online, "c-1")
    assert current.event_id == "ev-new"
    assert current.stream.offset == 1


async def test_same_millisecond_events_are_ordered_by_offset(
    ingest_settings: IngestSettings, topics: Topics, broker: LocalBroker, online: OnlineStore
) -> None:
    records = [update("c-2", 10, T0), update("c-2", 11, T0), update("c-2", 12, T0)]
    await produce(broker.bootstrap, topics.updates, records)
    async with running(ingest_settings):
        await until(lambda: _settled(ingest_settings, topics.updates, 3))
    current = await stored(online, "c-2")
    assert (current.value, current.sequence) == (12, 2)


async def _settled(settings: IngestSettings, topic: str, end: int) -> bool:
    offsets = await committed(settings, topic)
    return sum(o or 0 for o in offsets) >= end


async def test_three_clocks_and_lineage_are_kept(
    ingest_settings: IngestSettings, topics: Topics, broker: LocalBroker, online: OnlineStore
) -> None:
    effective = T0 + timedelta(hours=1)
    record = update("c-3", 7, T0, event_id="ev-clock", effective_time=effective)
    await produce(broker.bootstrap, topics.updates, [record])
    async with running(ingest_settings):
        await until(lambda: _settled(ingest_settings, topics.updates, 1))
    current = await stored(online, "c-3")
    lineage = current.lineage("customer", "c-3")
    assert lineage.event_time == T0
    assert lineage.effective_time == effective
    assert lineage.ingested_at > T0
    assert (lineage.channel, lineage.event_id, lineage.stream.topic) == (
        "stream",
        "ev-clock",
        topics.updates,
    )
    assert (lineage.source_system, lineage.transform, lineage.schema_version) == (
        "orders-service",
        "agg_v1",
        1,
    )


def _schema_changes(source: str, kind: str) -> float:
    """Schema changes of one kind on one stream, whichever feature they name."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "scoregate_schema_changes"
        for sample in metric.samples
        if sample.name.endswith("_total")
        and sample.labels.get("source") == source
        and sample.labels.get("kind") == kind
    )


async def test_every_kind_of_bad_record_is_dead_lettered_and_the_partition_moves_on(
    ingest_settings: IngestSettings, topics: Topics, broker: LocalBroker, online: OnlineStore
) -> None:
    key, value, headers = update("c-4", 1, T0)
    good_data = json.loads(value)

    def with_data(**changes: Any) -> tuple[bytes, bytes, Any]:
        return key, json.dumps({**good_data, **changes}).encode(), headers

    bad = {
        "undecodable": (key, b"{not json", headers),
        "contract": with_data(event_time="yesterday"),
        "unknown_feature": with_data(features={"no_such_feature": 1}),
        "entity": with_data(features={"chargeback_rate_90d": 0.1}),
        "dtype": with_data(features={"txn_count_30m": "many"}),
        "schema_version": update("c-4", 1, T0, schema_version=9),
        "missing ce_id": (key, value, [h for h in headers if h[0] != "ce_id"]),
    }
    schema_changes_before = _schema_changes("test_updates", "schema_version")
    records = [*bad.values(), update("c-4", 42, T0 + timedelta(seconds=1))]
    await produce(broker.bootstrap, topics.updates, records)
    async with running(ingest_settings) as worker:
        await until(lambda: _settled(ingest_settings, topics.updates, len(records)))
        assert worker.report.dead_lettered == len(bad)
    assert await value_of(online, "c-4") == 42

    letters = await _read_all(broker.bootstrap, f"{topics.updates}.dlq", len(bad))
    reasons = [dict(letter.headers)["scoregate.errors.reason"].decode() for letter in letters]
    assert reasons == [
        "undecodable",
        "contract",
        "unknown_feature",
        "entity",
        "dtype",
        "schema_version",
        "contract",
    ]
    first = letters[0]
    assert (first.key, first.value) == (key, b"{not json")
    errors = dict(first.headers)
    assert errors["scoregate.errors.topic"].decode() == topics.updates
    assert errors["scoregate.errors.offset"] == b"0"
    assert errors["ce_type"] == b"scoregate.features.updated"
    assert dict(letters[1].headers)["scoregate.errors.exception.message"]
    assert _schema_changes("test_updates", "schema_version") == schema_changes_before + 1


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(30):
            while len(records) < expected:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: r.offset)


def _env(settings: IngestSettings) -> dict[str, str]:
    return {
        **os.environ,
        "SCOREGATE_REGISTRY": str(settings.registry_path),
        "SCOREGATE_REDIS_URL": settings.redis_url,
        "SCOREGATE_REDIS_PREFIX": settings.redis_prefix,
        "SCOREGATE_KAFKA_BOOTSTRAP": settings.kafka.kafka_bootstrap,
        "SCOREGATE_INGEST_GROUP": settings.group_id,
    }


async def test_a_worker_killed_between_the_redis_write_and_the_commit_changes_nothing(
    ingest_settings: IngestSettings, topics: Topics, broker: LocalBroker, online: OnlineStore
) -> None:
    records = [update(f"c-k{n}", n, T0 + timedelta(seconds=n)) for n in range(20)]
    records.append(update("c-k0", 99, T0 + timedelta(minutes=5)))
    await produce(broker.bootstrap, topics.updates, records)
    crash = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.ingest_crash",
        env=_env(ingest_settings),
        stdout=asyncio.subprocess.PIPE,
    )
    assert crash.stdout is not None
    said = await crash.stdout.read()
    assert await crash.wait() == -signal.SIGKILL
    assert b"killed before the commit" in said
    # The first batch reached Redis, and Kafka never heard of it.
    assert not any(await committed(ingest_settings, topics.updates))
    before = {n: await stored(online, f"c-k{n}") for n in range(20)}
    written_before = [n for n, value in before.items() if value is not None]
    assert written_before

    async with running(ingest_settings) as worker:
        await until(lambda: _settled(ingest_settings, topics.updates, len(records)))
        report = worker.report
    # Everything the dead worker wrote comes again and changes nothing, to the byte.
    assert report.duplicate >= len(written_before)
    for n in written_before:
        assert await stored(online, f"c-k{n}") == before[n]
    assert [await value_of(online, f"c-k{n}") for n in range(1, 20)] == list(range(1, 20))
    assert await value_of(online, "c-k0") == 99


async def test_sigterm_finishes_the_batch_and_commits(
    ingest_settings: IngestSettings, topics: Topics, broker: LocalBroker, online: OnlineStore
) -> None:
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "ingest",
        env=_env(ingest_settings),
        stdout=asyncio.subprocess.PIPE,
    )
    records = [update(f"c-t{n}", n, T0) for n in range(30)]
    await produce(broker.bootstrap, topics.updates, records)
    await until(lambda: _has(online, "c-t29"))
    worker.send_signal(signal.SIGTERM)
    assert worker.stdout is not None
    out = await worker.stdout.read()
    assert await worker.wait() == 0
    assert json.loads(out.splitlines()[-1])["written"] == 30
    assert sum(o or 0 for o in await committed(ingest_settings, topics.updates)) == 30


async def _has(online: OnlineStore, customer: str) -> bool:
    return await stored(online, customer) is not None


async def test_two_workers_share_the_partitions_and_a_rebalance_loses_nothing(
    ingest_settings: IngestSettings, topics: Topics, broker: LocalBroker, online: OnlineStore
) -> None:
    await create_topic(broker.bootstrap, topics.updates, partitions=4)
    customers = [f"c-r{n}" for n in range(40)]

    async def wave(count: int) -> None:
        await produce(
            broker.bootstrap,
            topics.updates,
            [update(c, count, T0 + timedelta(seconds=count)) for c in customers],
        )

    async def all_at(count: int) -> bool:
        return all([await value_of(online, c) == count for c in customers])

    async with running(ingest_settings) as first:
        await wave(1)
        await until(lambda: all_at(1))
        assert len(_held(first, topics.updates)) == 4
        async with running(ingest_settings) as second:
            await until(lambda: _split(topics.updates, first, second))
            await wave(2)
            await until(lambda: all_at(2))
            shares = (first.report.written, second.report.written)
        # The second worker leaves: the first takes its partitions back.
        await wave(3)
        await until(lambda: all_at(3))
    assert shares[1] > 0
    assert await _settled(ingest_settings, topics.updates, 120)


def _held(worker: Any, topic: str) -> list[TopicPartition]:
    return [tp for tp in worker._require_consumer().assignment() if tp.topic == topic]


async def _split(topic: str, *workers: Any) -> bool:
    held = [len(_held(w, topic)) for w in workers]
    return sum(held) == 4 and all(held)


async def test_replay_from_a_time_and_a_backfill_never_roll_a_value_back(
    ingest_settings: IngestSettings,
    topics: Topics,
    broker: LocalBroker,
    online: OnlineStore,
    tmp_path: Path,
) -> None:
    records = [update("c-b", n, T0 + timedelta(seconds=n)) for n in range(5)]
    await produce(broker.bootstrap, topics.updates, records)
    async with running(ingest_settings):
        await until(lambda: _settled(ingest_settings, topics.updates, 5))
    assert await value_of(online, "c-b") == 4

    replay = Replay(from_time=datetime(2020, 1, 1, tzinfo=UTC))
    async with running(ingest_settings, replay=replay) as worker:
        await until(lambda: _at_least(worker.report, 5))
    # The first four are older than what the store holds, the fifth is the same event.
    report = worker.report
    assert (report.written, report.older, report.duplicate) == (0, 4, 1)
    assert await value_of(online, "c-b") == 4

    lines = []
    for n, value in ((2, 200), (9, 900)):
        _, data, headers = update("c-b", value, T0 + timedelta(seconds=n))
        attributes = {name.removeprefix("ce_"): v.decode() for name, v in headers}
        lines.append(
            json.dumps(
                {
                    "specversion": "1.0",
                    "id": attributes["id"],
                    "source": attributes["source"],
                    "type": attributes["type"],
                    "time": attributes["time"],
                    "datacontenttype": "application/json",
                    "data": json.loads(data),
                }
            )
        )
    file = tmp_path / "backfill.jsonl"
    file.write_text("\n".join(lines) + "\n")
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "ingest",
        "backfill",
        str(file),
        env=_env(ingest_settings),
        stdout=asyncio.subprocess.PIPE,
    )
    assert done.stdout is not None
    counts = json.loads((await done.stdout.read()).splitlines()[-1])
    assert await done.wait() == 0
    assert (counts["older"], counts["written"]) == (1, 1)
    current = await stored(online, "c-b")
    assert (current.value, current.channel) == (900, "backfill")


async def _at_least(report: Any, records: int) -> bool:
    return bool(report.records >= records)


FIXTURES = Path(__file__).parent / "fixtures"


def change_event(name: str) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """A Debezium fixture as the connector would produce it: JSON key and value."""
    fixture = json.loads((FIXTURES / f"{name}.json").read_text())
    key = None if fixture["key"] is None else json.dumps(fixture["key"]).encode()
    value = None if fixture["value"] is None else json.dumps(fixture["value"]).encode()
    return key, value, []


async def merchant_rate(online: OnlineStore, merchant: str) -> Any:
    [found] = await online.read([("merchant", merchant, ["chargeback_rate_90d"])], Deadline(5))
    return found.get("chargeback_rate_90d")


async def test_change_events_create_update_delete_and_tombstone_in_lsn_order(
    ingest_settings: IngestSettings, topics: Topics, broker: LocalBroker, online: OnlineStore
) -> None:
    await produce(
        broker.bootstrap,
        topics.changes,
        [
            change_event("pg_snapshot_read"),
            change_event("pg_update"),
            # Redelivered late, behind the update of the same row: a lower LSN.
            change_event("pg_create_with_schema"),
        ],
    )
    async with running(ingest_settings) as worker:
        await until(lambda: _settled(ingest_settings, topics.changes, 3))
        assert (worker.report.written, worker.report.older) == (2, 1)
        updated = await merchant_rate(online, "m-7")
        assert updated.value == 0.0131
        assert (updated.change.lsn, updated.change.table, updated.channel) == (
            24023304,
            "merchants",
            "cdc",
        )
        assert updated.event_time_ms == 1764583260045  # the source's commit time
        assert (await merchant_rate(online, "m-9")).change.snapshot

        await produce(
            broker.bootstrap,
            topics.changes,
            [change_event("pg_delete_with_schema"), change_event("pg_tombstone")],
        )
        await until(lambda: _settled(ingest_settings, topics.changes, 5))
        assert await merchant_rate(online, "m-7") is None
        # An update older than the delete cannot bring the row back.
        await produce(broker.bootstrap, topics.changes, [change_event("pg_update")])
        await until(lambda: _settled(ingest_settings, topics.changes, 6))
        assert await merchant_rate(online, "m-7") is None
    assert worker.report.dead_lettered == 0


async def test_a_truncate_is_dead_lettered_and_an_operator_can_pause_a_topic(
    ingest_settings: IngestSettings, topics: Topics, broker: LocalBroker, online: OnlineStore
) -> None:
    async with running(ingest_settings) as worker:
        await worker.controls.pause(topics.updates)
        await until(lambda: _paused(worker, topics.updates))
        await produce(broker.bootstrap, topics.updates, [update("c-p", 1, T0)])
        await produce(broker.bootstrap, topics.changes, [change_event("pg_truncate")])
        await until(lambda: _settled(ingest_settings, topics.changes, 1))
        assert worker.report.dead_lettered == 1
        assert await value_of(online, "c-p") is None
        await worker.controls.resume(topics.updates)
        await until(lambda: _has(online, "c-p"))
    letters = await _read_all(broker.bootstrap, f"{topics.changes}.dlq", 1)
    assert dict(letters[0].headers)["scoregate.errors.reason"] == b"unsupported_op"


async def _paused(worker: Any, topic: str) -> bool:
    consumer = worker._require_consumer()
    held = _held(worker, topic)
    return bool(held) and set(held) <= consumer.paused()


async def _cli(settings: IngestSettings, *args: str) -> tuple[int, bytes]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "ingest",
        *args,
        env=_env(settings),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    return await process.wait(), out


async def test_status_shows_the_groups_offsets_and_lag_and_pauses_through_the_cli(
    ingest_settings: IngestSettings, topics: Topics, broker: LocalBroker, online: OnlineStore
) -> None:
    await produce(broker.bootstrap, topics.updates, [update("c-s", n, T0) for n in range(3)])
    async with running(ingest_settings):
        await until(lambda: _settled(ingest_settings, topics.updates, 3))
    assert (await _cli(ingest_settings, "pause", topics.updates))[0] == 0
    code, out = await _cli(ingest_settings, "status")
    assert code == 0
    status = json.loads(out)
    assert status["paused"] == [topics.updates]
    rows = [row for row in status["partitions"] if row["topic"] == topics.updates]
    assert sum(row["end"] for row in rows) == 3
    assert sum(row["lag"] for row in rows) == 0
    assert (await _cli(ingest_settings, "resume", topics.updates))[0] == 0
    assert (await _cli(ingest_settings, "pause", "no-such-topic"))[0] == 2
