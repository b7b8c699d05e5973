"""Dead letters against real PostgreSQL and the broker: when an event goes to the
dead-letter topic, what it carries there, what waits behind it, and its redrive."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from aiokafka.structs import RecordMetadata

from contracts.events import DECISION_MADE, DECISION_ROLLED_BACK
from scoregate_dev.broker import LocalBroker
from tests.support.records import commit, make_record
from writeback.audit_store import AuditStore
from writeback.config import WritebackConfig
from writeback.dead_letters import DeadLetterQueue, NotDeadLettered
from writeback.kafka import KafkaPublisher, OutgoingMessage
from writeback.relay import OutboxRelay
from writeback.retention import Retention

pytestmark = pytest.mark.services

ERRORS = "scoregate.errors."


class FaultyPublisher(KafkaPublisher):
    """A real publisher that fails the messages of chosen (topic, key) pairs."""

    def __init__(self, config: WritebackConfig) -> None:
        super().__init__(config)
        self.faults: dict[tuple[str, str], BaseException] = {}

    async def publish(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[RecordMetadata | BaseException]:
        passed = [m for m in messages if (m.topic, m.key.decode()) not in self.faults]
        results = iter(await super().publish(passed))
        return [self.faults.get((m.topic, m.key.decode())) or next(results) for m in messages]


@pytest.fixture
def config(database_url: str, broker: LocalBroker, topic: str) -> WritebackConfig:
    return WritebackConfig(
        database_url=database_url,
        kafka_bootstrap=broker.bootstrap,
        topic=topic,
        relay_backoff_ms=10,
        relay_max_backoff_ms=50,
        relay_max_attempts=3,
        publish_timeout_ms=5000,
    )


@pytest.fixture
async def publisher(config: WritebackConfig) -> AsyncIterator[FaultyPublisher]:
    publisher = FaultyPublisher(config)
    yield publisher
    await publisher.stop()


@pytest.fixture
def relay(pool: asyncpg.Pool, publisher: FaultyPublisher, config: WritebackConfig) -> OutboxRelay:
    return OutboxRelay(pool, publisher, config)


@pytest.fixture
def dlq(pool: asyncpg.Pool, config: WritebackConfig) -> DeadLetterQueue:
    return DeadLetterQueue(pool, config)


async def settle(relay: OutboxRelay, pool: asyncpg.Pool, timeout: float = 15.0) -> None:
    """Run relay cycles until every event is delivered, dead-lettered or held behind one."""
    claimable = """
        SELECT count(*) FROM outbox AS o
        WHERE o.status = 'pending' AND NOT EXISTS (
            SELECT 1 FROM outbox AS p WHERE p.message_key = o.message_key
              AND p.status = 'dead_lettered' AND p.seq < o.seq)
    """
    async with asyncio.timeout(timeout):
        while await pool.fetchval(claimable):
            if not await relay.run_once():
                await asyncio.sleep(0.02)


async def read_topic(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(15):
            while len(records) < expected:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        for batch in (await consumer.getmany(timeout_ms=300)).values():
            records.extend(batch)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def headers_of(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}


async def test_non_retriable_error_dead_letters_at_once_with_error_headers(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    publisher: FaultyPublisher,
    relay: OutboxRelay,
    dlq: DeadLetterQueue,
) -> None:
    publisher.faults[(config.topic, "c-poison")] = TopicAuthorizationFailedError("denied")
    poison = await commit(store, make_record("c-poison"))
    others = [await commit(store, make_record(f"c-{n}")) for n in range(3)]

    await settle(relay, pool)

    [letter] = await read_topic(config.kafka_bootstrap, config.dead_letter_topic, 1)
    row = await pool.fetchrow(
        "SELECT * FROM outbox WHERE decision_id = $1", uuid.UUID(poison.decision_id)
    )
    assert row is not None
    assert (row["status"], row["attempts"], row["dead_letter_reason"]) == (
        "dead_lettered",
        1,
        "non_retriable",
    )
    assert (row["dlq_topic"], row["dlq_partition"], row["dlq_offset"]) == (
        config.dead_letter_topic,
        letter.partition,
        letter.offset,
    )
    assert letter.key == b"c-poison"
    assert letter.value == row["payload"]
    headers = headers_of(letter)
    assert headers["ce_id"] == str(row["event_id"])
    assert headers["ce_type"] == DECISION_MADE
    assert headers["ce_subject"] == poison.decision_id
    assert headers["ce_specversion"] == "1.0"
    assert headers[ERRORS + "topic"] == config.topic
    assert headers[ERRORS + "stage"] == "produce"
    assert headers[ERRORS + "class.name"] == "writeback.relay.OutboxRelay"
    assert headers[ERRORS + "exception.class.name"] == (
        "aiokafka.errors.TopicAuthorizationFailedError"
    )
    assert "denied" in headers[ERRORS + "exception.message"]
    assert headers[ERRORS + "reason"] == "non_retriable"
    assert headers[ERRORS + "attempts"] == "1"
    assert headers[ERRORS + "outbox.seq"] == str(row["seq"])
    assert headers[ERRORS + "relay.id"].startswith("relay@")
    first = datetime.fromisoformat(headers[ERRORS + "first.failure.time"])
    last = datetime.fromisoformat(headers[ERRORS + "last.failure.time"])
    assert first == last == row["first_failed_at"] == row["last_failed_at"]
    assert ERRORS + "value.omitted" not in headers
    # Other subjects went out as usual.
    delivered = await read_topic(config.kafka_bootstrap, config.topic, 3)
    assert {r.key for r in delivered} == {b"c-0", b"c-1", b"c-2"}
    assert relay.dead_lettered == 1
    # The decision says where its event went, and how.
    found = await store.get(poison.decision_id)
    assert found is not None
    [state] = found.writeback
    assert (state.status, state.attempts) == ("dead_lettered", 1)
    assert state.dead_lettered_at is not None
    assert [entry.stage for entry in found.timeline] == ["committed", "dead_lettered"]
    assert found.timeline[1].topic == config.dead_letter_topic
    assert "TopicAuthorizationFailedError" in (found.timeline[1].error or "")
    page = await dlq.list()
    assert [item.event_id for item in page.items] == [state.event_id]
    assert page.items[0].error_class == "aiokafka.errors.TopicAuthorizationFailedError"
    assert others[0].decision_id != poison.decision_id


async def test_unclear_errors_dead_letter_after_the_attempt_limit(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    publisher: FaultyPublisher,
    relay: OutboxRelay,
) -> None:
    publisher.faults[(config.topic, "c-7")] = KafkaError("something odd")
    await commit(store, make_record("c-7"))

    await settle(relay, pool)

    row = await pool.fetchrow("SELECT * FROM outbox")
    assert row is not None
    assert (row["status"], row["attempts"], row["failures"], row["dead_letter_reason"]) == (
        "dead_lettered",
        config.relay_max_attempts,
        config.relay_max_attempts,
        "attempts_exhausted",
    )
    assert row["first_failed_at"] < row["last_failed_at"]
    [letter] = await read_topic(config.kafka_bootstrap, config.dead_letter_topic, 1)
    headers = headers_of(letter)
    assert headers[ERRORS + "reason"] == "attempts_exhausted"
    assert headers[ERRORS + "attempts"] == str(config.relay_max_attempts)
    assert headers[ERRORS + "exception.class.name"] == "aiokafka.errors.KafkaError"


async def test_broker_outage_never_dead_letters(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    own_broker: LocalBroker,
) -> None:
    config = msgspec.structs.replace(
        config, kafka_bootstrap=own_broker.bootstrap, relay_max_attempts=1
    )
    publisher = KafkaPublisher(config)
    relay = OutboxRelay(pool, publisher, config)
    try:
        await commit(store, make_record("c-1"))
        for _ in range(3):
            await relay.run_once()
            await asyncio.sleep(0.06)
        row = await pool.fetchrow("SELECT * FROM outbox")
        assert row is not None
        assert (row["status"], row["failures"], row["dead_letter_reason"]) == ("pending", 0, None)
        assert row["attempts"] >= 2

        await own_broker.start()
        await settle(relay, pool)
    finally:
        await publisher.stop()
    assert await pool.fetchval("SELECT status FROM outbox") == "delivered"


async def test_unreachable_dead_letter_topic_leaves_the_event_pending(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    publisher: FaultyPublisher,
    relay: OutboxRelay,
) -> None:
    publisher.faults[(config.topic, "c-1")] = TopicAuthorizationFailedError("denied")
    publisher.faults[(config.dead_letter_topic, "c-1")] = TopicAuthorizationFailedError("no dlq")
    await commit(store, make_record("c-1"))

    for _ in range(4):
        await relay.run_once()
        await asyncio.sleep(0.06)

    row = await pool.fetchrow("SELECT * FROM outbox")
    assert row is not None
    # Bound for the dead-letter topic: the outcome topic was tried once only.
    assert (row["status"], row["attempts"], row["dead_letter_reason"]) == (
        "pending",
        1,
        "non_retriable",
    )
    assert "denied" in row["last_error"]

    del publisher.faults[(config.dead_letter_topic, "c-1")]
    await settle(relay, pool)

    assert await pool.fetchval("SELECT status FROM outbox") == "dead_lettered"
    [letter] = await read_topic(config.kafka_bootstrap, config.dead_letter_topic, 1)
    assert "denied" in headers_of(letter)[ERRORS + "exception.message"]


async def test_rollback_waits_behind_its_dead_lettered_decision_and_follows_its_redrive(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    publisher: FaultyPublisher,
    relay: OutboxRelay,
    dlq: DeadLetterQueue,
) -> None:
    publisher.faults[(config.topic, "c-9")] = TopicAuthorizationFailedError("denied")
    record = make_record("c-9")
    made = await commit(store, record)
    await settle(relay, pool)
    answer = await store.rollback(record.decision_id, "customer disputed", "ops-1")
    assert answer is not None
    await commit(store, make_record("c-10"))

    await settle(relay, pool)

    statuses = {
        row["event_type"]: row["status"]
        for row in await pool.fetch("SELECT * FROM outbox WHERE message_key = 'c-9'")
    }
    assert statuses == {DECISION_MADE: "dead_lettered", DECISION_ROLLED_BACK: "pending"}
    [letter] = (await dlq.list()).items
    assert (letter.event_id, letter.held, letter.status) == (
        made.writeback[0].event_id,
        1,
        "dead_lettered",
    )
    [other] = await read_topic(config.kafka_bootstrap, config.topic, 1)
    assert other.key == b"c-10"

    del publisher.faults[(config.topic, "c-9")]
    redriven = await dlq.redrive(letter.event_id, "ops-2")
    assert redriven is not None
    assert (redriven.status, redriven.redrives, redriven.reason) == ("pending", 1, None)
    await settle(relay, pool)

    records = await read_topic(config.kafka_bootstrap, config.topic, 3)
    ours = [r for r in records if r.key == b"c-9"]
    assert [headers_of(r)["ce_type"] for r in ours] == [DECISION_MADE, DECISION_ROLLED_BACK]
    assert headers_of(ours[0])["ce_id"] == letter.event_id
    assert ours[0].partition == ours[1].partition
    assert ours[0].offset < ours[1].offset
    assert (await dlq.list()).items == []
    found = await store.get(record.decision_id)
    assert found is not None
    assert [(e.type, e.stage) for e in found.timeline] == [
        (DECISION_MADE, "committed"),
        (DECISION_MADE, "dead_lettered"),
        (DECISION_ROLLED_BACK, "committed"),
        (DECISION_MADE, "redriven"),
        (DECISION_MADE, "published"),
        (DECISION_ROLLED_BACK, "published"),
    ]
    assert found.timeline[3].actor == "ops-2"
    assert [(s.type, s.status, s.redrives) for s in found.writeback] == [
        (DECISION_MADE, "delivered", 1),
        (DECISION_ROLLED_BACK, "delivered", 0),
    ]


async def test_redrive_of_unknown_pending_or_delivered_events(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    relay: OutboxRelay,
    dlq: DeadLetterQueue,
) -> None:
    assert await dlq.redrive(str(uuid.uuid4()), "ops") is None
    assert await dlq.redrive("not-an-id", "ops") is None
    committed = await commit(store, make_record("c-1"))
    event_id = committed.writeback[0].event_id
    with pytest.raises(NotDeadLettered) as raised:
        await dlq.redrive(event_id, "ops")
    assert raised.value.status == "pending"

    await settle(relay, pool)
    with pytest.raises(NotDeadLettered) as raised:
        await dlq.redrive(event_id, "ops")
    assert raised.value.status == "delivered"
    # Still known as delivered once the outbox row is purged.
    config = msgspec.structs.replace(config, outbox_retention_hours=0)
    await Retention(pool, config).run_once()
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    with pytest.raises(NotDeadLettered) as raised:
        await dlq.redrive(event_id, "ops")
    assert raised.value.status == "delivered"


async def test_list_pages_through_dead_letters(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    publisher: FaultyPublisher,
    relay: OutboxRelay,
    dlq: DeadLetterQueue,
) -> None:
    for n in range(3):
        publisher.faults[(config.topic, f"c-{n}")] = TopicAuthorizationFailedError("denied")
        await commit(store, make_record(f"c-{n}"))
    await settle(relay, pool)

    first = await dlq.list(limit=2)
    assert [item.key for item in first.items] == ["c-0", "c-1"]
    assert first.next_cursor is not None
    second = await dlq.list(limit=2, cursor=first.next_cursor)
    assert [item.key for item in second.items] == ["c-2"]
    assert second.next_cursor is None
    with pytest.raises(ValueError, match="cursor"):
        await dlq.list(cursor="x")
    stats = await dlq.stats()
    assert (stats.pending, stats.dead_lettered) == (0, 3)


async def test_oversize_event_is_dead_lettered_without_its_value_and_redriven_later(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    dlq: DeadLetterQueue,
) -> None:
    small = msgspec.structs.replace(config, max_message_bytes=16_384)
    publisher = KafkaPublisher(small)
    relay = OutboxRelay(pool, publisher, small)
    try:
        big = await commit(store, make_record("c-big", outputs={"blob": "x" * 40_000}))
        await commit(store, make_record("c-small"))
        await settle(relay, pool)
    finally:
        await publisher.stop()

    [letter] = await read_topic(config.kafka_bootstrap, config.dead_letter_topic, 1)
    headers = headers_of(letter)
    assert headers[ERRORS + "exception.class.name"] == "aiokafka.errors.MessageSizeTooLargeError"
    assert headers[ERRORS + "reason"] == "non_retriable"
    assert headers[ERRORS + "value.omitted"] == "true"
    assert headers["ce_id"] == big.writeback[0].event_id
    assert (letter.key, letter.value) == (b"c-big", b"")

    # An operator raises the limit, then redrives: the full event goes out.
    publisher = KafkaPublisher(config)
    relay = OutboxRelay(pool, publisher, config)
    try:
        assert await dlq.redrive(big.writeback[0].event_id, "ops") is not None
        await settle(relay, pool)
    finally:
        await publisher.stop()
    records = await read_topic(config.kafka_bootstrap, config.topic, 2)
    [redriven] = [r for r in records if r.key == b"c-big"]
    assert headers_of(redriven)["ce_id"] == big.writeback[0].event_id
    assert len(redriven.value) > 40_000
