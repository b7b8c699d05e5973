"""The outbox relay against real PostgreSQL and a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from contracts.events import (
    DECISION_MADE,
    DECISION_ROLLED_BACK,
    DecisionMade,
    DecisionRolledBack,
    OutcomeEvent,
)
from scoregate_dev.broker import LocalBroker
from tests.support.records import commit, make_record
from tests.support.services import consume
from writeback.audit_store import AuditStore
from writeback.config import WritebackConfig
from writeback.kafka import KafkaPublisher, OutgoingMessage
from writeback.pool import create_pool
from writeback.relay import OutboxRelay

pytestmark = pytest.mark.services

event_decoder = msgspec.json.Decoder(OutcomeEvent)


async def drain(relay: OutboxRelay, pool: asyncpg.Pool, timeout: float = 20.0) -> None:
    """Run relay cycles until no outbox row is pending."""
    async with asyncio.timeout(timeout):
        while await pool.fetchval("SELECT count(*) FROM outbox WHERE status <> 'delivered'"):
            if not await relay.run_once():
                await asyncio.sleep(0.05)


@pytest.fixture
def config(database_url: str, broker: LocalBroker, topic: str) -> WritebackConfig:
    return WritebackConfig(
        database_url=database_url,
        kafka_bootstrap=broker.bootstrap,
        topic=topic,
        relay_backoff_ms=20,
        relay_max_backoff_ms=200,
        publish_timeout_ms=5000,
    )


@pytest.fixture
async def make_relay(
    pool: asyncpg.Pool,
) -> AsyncIterator[Callable[[WritebackConfig], Awaitable[OutboxRelay]]]:
    """Builds relays with publishers of their own; stops them all afterwards."""
    made: list[tuple[OutboxRelay, KafkaPublisher]] = []

    async def build(config: WritebackConfig) -> OutboxRelay:
        publisher = KafkaPublisher(config)
        relay = OutboxRelay(pool, publisher, config)
        made.append((relay, publisher))
        return relay

    yield build
    for relay, publisher in made:
        await relay.stop()
        await publisher.stop()


async def test_relay_publishes_cloudevents(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    records = [make_record(customer=f"c-{n}") for n in range(6)]
    for record in records:
        await commit(store, record)
    relay = await make_relay(config)

    assert await relay.run_once() == 6

    messages = await consume(config.kafka_bootstrap, config.topic, expected=6)
    assert len(messages) == 6
    rows = {str(row["event_id"]): row for row in await pool.fetch("SELECT * FROM outbox")}
    by_decision = {record.decision_id: record for record in records}
    for message in messages:
        headers = dict(message.headers)
        assert len(headers) == len(message.headers)
        # The CloudEvents attributes, and the trace context when a tracer records spans.
        assert set(headers) - {"traceparent", "tracestate"} == {
            "ce_specversion",
            "ce_id",
            "ce_type",
            "ce_source",
            "ce_time",
            "ce_subject",
            "content-type",
        }
        row = rows[headers["ce_id"].decode()]
        record = by_decision[headers["ce_subject"].decode()]
        assert headers["ce_specversion"] == b"1.0"
        assert headers["ce_type"] == DECISION_MADE.encode()
        assert headers["ce_source"] == b"/scoregate"
        assert headers["content-type"] == b"application/json"
        ce_time = headers["ce_time"].decode()
        assert ce_time.endswith("Z")
        assert datetime.fromisoformat(ce_time) == record.decided_at
        assert message.key == record.subject.id.encode()
        assert message.value == row["payload"]
        event = event_decoder.decode(message.value)
        assert isinstance(event, DecisionMade)
        assert (event.decision_id, event.request_id) == (record.decision_id, record.request_id)
        assert (row["status"], row["attempts"]) == ("delivered", 1)
        assert (row["partition"], row["offset"]) == (message.partition, message.offset)
        assert row["delivered_at"] is not None
        assert row["last_error"] is None
    stored = await store.get(records[0].decision_id)
    assert stored is not None
    assert [state.status for state in stored.writeback] == ["delivered"]
    assert relay.published == 6
    assert await relay.run_once() == 0


async def test_relay_creates_topic_with_configured_partitions(
    store: AuditStore,
    config: WritebackConfig,
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    await commit(store, make_record())
    relay = await make_relay(config)

    await relay.run_once()

    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka_bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([config.topic])
    finally:
        await admin.close()
    assert sorted(p["partition"] for p in described["partitions"]) == [0, 1, 2]


async def test_broker_down_keeps_rows_pending_until_it_returns(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    own_broker: LocalBroker,
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    config = msgspec.structs.replace(config, kafka_bootstrap=own_broker.bootstrap)
    for n in range(5):
        await commit(store, make_record(customer=f"c-{n}"))
    relay = await make_relay(config)

    for _ in range(3):
        await relay.run_once()
        await asyncio.sleep(0.25)

    rows = await pool.fetch("SELECT * FROM outbox")
    assert {row["status"] for row in rows} == {"pending"}
    assert all(row["attempts"] >= 2 for row in rows)
    assert all("Kafka" in row["last_error"] for row in rows)
    assert relay.failed >= 10

    await own_broker.start()
    await drain(relay, pool)

    messages = await consume(own_broker.bootstrap, config.topic, expected=5)
    assert len(messages) == 5
    assert len({dict(message.headers)["ce_id"] for message in messages}) == 5


async def test_broker_lost_after_start_times_out_and_recovers(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    own_broker: LocalBroker,
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    config = msgspec.structs.replace(
        config, kafka_bootstrap=own_broker.bootstrap, publish_timeout_ms=1500
    )
    await own_broker.start()
    relay = await make_relay(config)
    await commit(store, make_record(customer="c-1"))
    await drain(relay, pool)
    await own_broker.stop()

    await commit(store, make_record(customer="c-2"))
    assert await relay.run_once() == 1
    row = await pool.fetchrow("SELECT * FROM outbox ORDER BY seq DESC LIMIT 1")
    assert row is not None
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert row["last_error"]

    await own_broker.start()
    await drain(relay, pool)
    # The restarted broker kept nothing (memory storage), so only the second event is
    # there; the attempt that timed out may have been delivered as well once the
    # broker was back, under the same id, which is what consumers dedupe on.
    messages = await consume(own_broker.bootstrap, config.topic, expected=1)
    assert {dict(message.headers)["ce_id"].decode() for message in messages} == {
        str(row["event_id"])
    }


async def test_rollback_never_overtakes_its_decision(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    own_broker: LocalBroker,
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    config = msgspec.structs.replace(config, kafka_bootstrap=own_broker.bootstrap)
    record = make_record(customer="c-77")
    await commit(store, record)
    relay = await make_relay(config)
    assert await relay.run_once() == 1  # the broker is down: this attempt fails
    await store.rollback(record.decision_id, "bad input", "ops-1")

    # The rollback waits behind its failed decision, however often the relay runs.
    for _ in range(5):
        await relay.run_once()
        await asyncio.sleep(0.05)
    rolled = await pool.fetchrow("SELECT * FROM outbox WHERE event_type = $1", DECISION_ROLLED_BACK)
    assert rolled is not None
    assert (rolled["status"], rolled["attempts"]) == ("pending", 0)

    await own_broker.start()
    await drain(relay, pool)

    messages = await consume(own_broker.bootstrap, config.topic, expected=2)
    assert [dict(message.headers)["ce_type"].decode() for message in messages] == [
        DECISION_MADE,
        DECISION_ROLLED_BACK,
    ]
    assert messages[0].partition == messages[1].partition
    assert messages[0].offset < messages[1].offset
    rollback = event_decoder.decode(messages[1].value)
    assert isinstance(rollback, DecisionRolledBack)
    assert (rollback.decision_id, rollback.reason) == (record.decision_id, "bad input")


async def test_two_relays_keep_order_per_key(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    config = msgspec.structs.replace(config, relay_batch_size=3)
    records = [make_record(customer=f"c-{n % 3}") for n in range(12)]
    for record in records:
        await commit(store, record)
    for record in records[::2]:
        await store.rollback(record.decision_id, "r", "ops")
    relays = [await make_relay(config), await make_relay(config)]

    async with asyncio.timeout(30):
        while await pool.fetchval("SELECT count(*) FROM outbox WHERE status <> 'delivered'"):
            await asyncio.gather(*(relay.run_once() for relay in relays))

    total = await pool.fetchval("SELECT count(*) FROM outbox")
    messages = await consume(config.kafka_bootstrap, config.topic, expected=total)
    assert len(messages) == total
    expected: dict[str, list[str]] = {}
    for row in await pool.fetch("SELECT * FROM outbox ORDER BY seq"):
        expected.setdefault(row["message_key"], []).append(str(row["event_id"]))
    seen: dict[str, list[str]] = {}
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        seen.setdefault(message.key.decode(), []).append(dict(message.headers)["ce_id"].decode())
    assert seen == expected


async def test_notification_wakes_the_relay(
    store: AuditStore,
    config: WritebackConfig,
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    config = msgspec.structs.replace(config, relay_poll_interval_ms=10_000)
    relay = await make_relay(config)
    await relay.start()
    await asyncio.wait_for(relay.wait_idle(), 10)
    # The relay is parked for the next ten seconds unless the commit wakes it.
    await asyncio.sleep(0.2)

    record = await commit(store, make_record())

    messages = await consume(config.kafka_bootstrap, config.topic, expected=1, timeout=3)
    assert dict(messages[0].headers)["ce_subject"] == record.decision_id.encode()


async def test_background_relay_survives_and_drains(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    own_broker: LocalBroker,
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    config = msgspec.structs.replace(
        config, kafka_bootstrap=own_broker.bootstrap, relay_poll_interval_ms=50
    )
    relay = await make_relay(config)
    await relay.start()
    for n in range(3):
        await commit(store, make_record(customer=f"c-{n}"))
    await asyncio.sleep(0.5)
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE status = 'delivered'") == 0

    await own_broker.start()

    async with asyncio.timeout(15):
        while await pool.fetchval("SELECT count(*) FROM outbox WHERE status <> 'delivered'"):
            await asyncio.sleep(0.1)
    messages = await consume(own_broker.bootstrap, config.topic, expected=3)
    assert len(messages) == 3


async def test_publisher_ready_reflects_the_broker(
    config: WritebackConfig, own_broker: LocalBroker
) -> None:
    publisher = KafkaPublisher(
        msgspec.structs.replace(config, kafka_bootstrap=own_broker.bootstrap)
    )
    try:
        assert await publisher.ready(1.0) is False
        await own_broker.start()
        assert await publisher.ready(2.0) is True
        assert not publisher.started
        [outcome] = await publisher.publish(
            [OutgoingMessage(topic=config.topic, key=b"k", value=b"{}", headers=[("h", b"v")])]
        )
        assert not isinstance(outcome, BaseException)
        assert outcome.topic == config.topic
    finally:
        await publisher.stop()


async def test_relay_listens_again_after_losing_its_connection(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    config = msgspec.structs.replace(config, relay_poll_interval_ms=10_000)
    relay = await make_relay(config)
    await relay.start()
    await asyncio.wait_for(relay.wait_idle(), 10)
    listeners = (
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    [old] = [row["pid"] for row in await pool.fetch(listeners)]

    assert await pool.fetchval("SELECT pg_terminate_backend($1)", old)

    async with asyncio.timeout(10):
        while [row["pid"] for row in await pool.fetch(listeners)] in ([], [old]):
            await asyncio.sleep(0.05)
    await asyncio.wait_for(relay.wait_idle(), 10)
    record = await commit(store, make_record())
    messages = await consume(config.kafka_bootstrap, config.topic, expected=1, timeout=3)
    assert dict(messages[0].headers)["ce_subject"] == record.decision_id.encode()


async def test_relay_without_postgres_keeps_running(
    config: WritebackConfig, make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]]
) -> None:
    unreachable = msgspec.structs.replace(
        config, database_url="postgresql://postgres@127.0.0.1:9/none", pool_min_size=0
    )
    dead_pool = await create_pool(unreachable)
    publisher = KafkaPublisher(unreachable)
    relay = OutboxRelay(dead_pool, publisher, unreachable)
    try:
        await relay.start()
        await asyncio.sleep(1)
        assert relay.running
        with pytest.raises(OSError):
            await relay.run_once()
        assert not relay.published
    finally:
        await relay.stop()
        await publisher.stop()
        await dead_pool.close()


class HeldPublisher(KafkaPublisher):
    """A publisher whose ``publish`` waits, once inside, until the test lets it go on."""

    def __init__(self, config: WritebackConfig) -> None:
        super().__init__(config)
        self.inside = asyncio.Event()
        self.go_on = asyncio.Event()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[Any]:
        self.inside.set()
        await self.go_on.wait()
        return await super().publish(messages)


@pytest.fixture
async def held_publishers() -> AsyncIterator[Callable[[WritebackConfig], HeldPublisher]]:
    """Builds held publishers; lets them all go and stops them afterwards."""
    made: list[HeldPublisher] = []

    def build(config: WritebackConfig) -> HeldPublisher:
        made.append(HeldPublisher(config))
        return made[-1]

    yield build
    for publisher in made:
        publisher.go_on.set()
        await publisher.stop()


OPEN_TRANSACTIONS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
"""


async def test_no_transaction_or_connection_is_held_while_publishing(
    store: AuditStore,
    pool: asyncpg.Pool,
    pg: asyncpg.Connection,
    config: WritebackConfig,
    held_publishers: Callable[[WritebackConfig], HeldPublisher],
) -> None:
    record = await commit(store, make_record(customer="c-held"))
    publisher = held_publishers(config)
    relay = OutboxRelay(pool, publisher, config)
    cycle = asyncio.create_task(relay.run_once())
    await asyncio.wait_for(publisher.inside.wait(), 10)

    # The relay is waiting on Kafka: no backend of this database is in a transaction,
    # and every connection of the pool is back in it.
    assert await pg.fetchval(OPEN_TRANSACTIONS) == 0
    assert pool.get_idle_size() == pool.get_size()
    claim = await pg.fetchrow(
        "SELECT claimed_by, claimed_until > now() AS held FROM outbox WHERE decision_id = $1",
        uuid.UUID(record.decision_id),
    )
    assert claim is not None
    assert claim["claimed_by"].startswith("relay@")
    assert claim["held"]

    publisher.go_on.set()
    assert await asyncio.wait_for(cycle, 20) == 1
    row = await pg.fetchrow(
        "SELECT * FROM outbox WHERE decision_id = $1", uuid.UUID(record.decision_id)
    )
    assert row is not None
    assert (row["status"], row["attempts"]) == ("delivered", 1)
    assert (row["claimed_by"], row["claimed_until"]) == (None, None)


async def test_a_relay_dead_mid_publish_leaves_its_rows_to_others_once_its_lease_ends(
    store: AuditStore,
    pool: asyncpg.Pool,
    pg: asyncpg.Connection,
    config: WritebackConfig,
    held_publishers: Callable[[WritebackConfig], HeldPublisher],
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    first = await commit(store, make_record(customer="c-1"))
    second = await commit(store, make_record(customer="c-1"))
    other = await commit(store, make_record(customer="c-2"))
    publisher = held_publishers(config)
    dying = OutboxRelay(pool, publisher, msgspec.structs.replace(config, relay_lease_ms=600_000))
    cycle = asyncio.create_task(dying.run_once())
    await asyncio.wait_for(publisher.inside.wait(), 10)
    cycle.cancel()  # the relay dies mid-publish: nothing is recorded or given up
    with pytest.raises(asyncio.CancelledError):
        await cycle
    survivor = await make_relay(config)

    # Its lease holds the heads of both keys, and the second event of c-1 waits
    # behind its head.
    assert await survivor.run_once() == 0
    # The lease's end, brought forward.
    await pg.execute("UPDATE outbox SET claimed_until = now() WHERE claimed_by IS NOT NULL")
    await drain(survivor, pool)

    messages = await consume(config.kafka_bootstrap, config.topic, expected=3)
    by_key: dict[bytes, list[str]] = {}
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        by_key.setdefault(message.key, []).append(dict(message.headers)["ce_subject"].decode())
    assert by_key == {
        b"c-1": [first.decision_id, second.decision_id],
        b"c-2": [other.decision_id],
    }
    assert survivor.published == 3


async def test_a_late_outcome_after_the_lease_was_taken_over_changes_nothing(
    store: AuditStore,
    pool: asyncpg.Pool,
    pg: asyncpg.Connection,
    config: WritebackConfig,
    held_publishers: Callable[[WritebackConfig], HeldPublisher],
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    record = await commit(store, make_record(customer="c-slow"))
    publisher = held_publishers(config)
    slow = OutboxRelay(pool, publisher, config)
    cycle = asyncio.create_task(slow.run_once())
    await asyncio.wait_for(publisher.inside.wait(), 10)
    await pg.execute("UPDATE outbox SET claimed_until = now() WHERE claimed_by IS NOT NULL")
    survivor = await make_relay(config)
    assert await survivor.run_once() == 1

    publisher.go_on.set()  # the slow relay publishes too, then records: on nothing it holds
    assert await asyncio.wait_for(cycle, 20) == 1

    key = uuid.UUID(record.decision_id)
    row = await pg.fetchrow("SELECT * FROM outbox WHERE decision_id = $1", key)
    assert row is not None
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("delivered", 1, None)
    published = await pg.fetchval(
        "SELECT count(*) FROM writeback_timeline WHERE decision_id = $1 AND stage = 'published'",
        key,
    )
    assert published == 1


async def test_outcomes_that_could_not_be_recorded_are_recorded_next_without_a_resend(
    store: AuditStore,
    pg: asyncpg.Connection,
    config: WritebackConfig,
    held_publishers: Callable[[WritebackConfig], HeldPublisher],
) -> None:
    record = await commit(store, make_record(customer="c-rec"))
    small = msgspec.structs.replace(
        config, pool_min_size=0, pool_max_size=1, pool_acquire_timeout_ms=200
    )
    relay_pool = await create_pool(small)
    publisher = held_publishers(small)
    relay = OutboxRelay(relay_pool, publisher, small)
    try:
        cycle = asyncio.create_task(relay.run_once())
        await asyncio.wait_for(publisher.inside.wait(), 10)
        # Something else holds the pool's only connection while the publish completes:
        # the record waits its bounded time, then the cycle fails.
        async with relay_pool.acquire():
            publisher.go_on.set()
            done, _ = await asyncio.wait({cycle}, timeout=20)
            assert cycle in done
            assert isinstance(cycle.exception(), TimeoutError)
        held = await pg.fetchrow(
            "SELECT status, claimed_by FROM outbox WHERE decision_id = $1",
            uuid.UUID(record.decision_id),
        )
        assert held is not None
        assert held["status"] == "pending"
        assert held["claimed_by"] is not None

        assert await relay.run_once() == 0
    finally:
        await relay_pool.close()
    row = await pg.fetchrow(
        "SELECT * FROM outbox WHERE decision_id = $1", uuid.UUID(record.decision_id)
    )
    assert row is not None
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("delivered", 1, None)
    messages = await consume(config.kafka_bootstrap, config.topic, expected=1)
    assert [dict(m.headers)["ce_subject"].decode() for m in messages] == [record.decision_id]


async def test_a_busy_key_drains_without_a_poll_interval_per_event(
    store: AuditStore,
    pool: asyncpg.Pool,
    config: WritebackConfig,
    make_relay: Callable[[WritebackConfig], Awaitable[OutboxRelay]],
) -> None:
    # One key's events go one per cycle (each waits for the one before it): with a
    # poll between cycles, five events would take four minutes.
    records = [make_record(customer="c-busy") for _ in range(5)]
    for record in records:
        await commit(store, record)
    relay = await make_relay(msgspec.structs.replace(config, relay_poll_interval_ms=60_000))
    await relay.start()

    async with asyncio.timeout(30):
        while await pool.fetchval("SELECT count(*) FROM outbox WHERE status <> 'delivered'"):
            await asyncio.sleep(0.05)
    messages = await consume(config.kafka_bootstrap, config.topic, expected=5)
    ordered = sorted(messages, key=lambda m: m.offset)
    assert [dict(m.headers)["ce_subject"].decode() for m in ordered] == [
        record.decision_id for record in records
    ]


async def test_a_publish_longer_than_the_lease_keeps_its_claim_renewed(
    store: AuditStore,
    pool: asyncpg.Pool,
    pg: asyncpg.Connection,
    config: WritebackConfig,
    held_publishers: Callable[[WritebackConfig], HeldPublisher],
) -> None:
    record = await commit(store, make_record(customer="c-long"))
    key = uuid.UUID(record.decision_id)
    short = msgspec.structs.replace(config, relay_lease_ms=600)
    publisher = held_publishers(short)
    relay = OutboxRelay(pool, publisher, short)
    cycle = asyncio.create_task(relay.run_once())
    await asyncio.wait_for(publisher.inside.wait(), 10)
    until = "SELECT claimed_until FROM outbox WHERE decision_id = $1"
    first = await pg.fetchval(until, key)

    # The publish outlasts the lease many times over; the relay keeps extending it.
    async with asyncio.timeout(20):
        while (await pg.fetchval(until, key)) <= first:
            await asyncio.sleep(0.05)
    assert await pg.fetchval(OPEN_TRANSACTIONS) == 0

    publisher.go_on.set()
    assert await asyncio.wait_for(cycle, 20) == 1
    row = await pg.fetchrow("SELECT * FROM outbox WHERE decision_id = $1", key)
    assert row is not None
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("delivered", 1, None)
