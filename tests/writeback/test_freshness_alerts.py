"""Freshness alert states and events against real PostgreSQL and the broker: one
evaluation at a time, a change and its CloudEvent committed together, published on the
alerts topic with the feature as subject and key, through the relay that publishes
decisions (whose subject stays the decision id)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from contracts.events import (
    FRESHNESS_BREACHED,
    FRESHNESS_RECOVERED,
    AlertWindow,
    FreshnessAlertEvent,
    FreshnessBreached,
    FreshnessRecovered,
)
from contracts.registry import FreshnessObjective
from scoregate_dev.broker import LocalBroker
from tests.support.records import commit, make_record
from tests.support.services import consume
from writeback import AuditUnavailable, DeadLetterQueue, Retention
from writeback.audit_store import AuditStore
from writeback.config import WritebackConfig
from writeback.freshness_alerts import AlertUpdate, FreshnessAlertStore
from writeback.kafka import KafkaPublisher
from writeback.relay import OutboxRelay

pytestmark = pytest.mark.services

decoder = msgspec.json.Decoder(FreshnessAlertEvent)


@pytest.fixture
def config(database_url: str, broker: LocalBroker, topic: str) -> WritebackConfig:
    return WritebackConfig(
        database_url=database_url,
        kafka_bootstrap=broker.bootstrap,
        topic=topic,
        alerts_topic=f"alerts-{uuid.uuid4().hex[:10]}",
        freshness_resolution_s=1,
        publish_timeout_ms=5000,
    )


@pytest.fixture
def alerts(pool: asyncpg.Pool, config: WritebackConfig) -> FreshnessAlertStore:
    return FreshnessAlertStore(pool, config)


@pytest.fixture
async def relay(pool: asyncpg.Pool, config: WritebackConfig) -> AsyncIterator[OutboxRelay]:
    publisher = KafkaPublisher(config)
    relay = OutboxRelay(pool, publisher, config)
    yield relay
    await relay.stop()
    await publisher.stop()


SINCE = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WINDOWS = [
    AlertWindow(window="long", seconds=20, served=40, within_sla=10, burn_rate=7.5),
    AlertWindow(window="short", seconds=5, served=10, within_sla=0, burn_rate=10.0),
]


def event_of(firing: bool) -> FreshnessAlertEvent:
    kind = FreshnessBreached if firing else FreshnessRecovered
    return kind(
        feature="txn_count",
        alert="fast",
        owner="risk@example.com",
        sla_ms=5000,
        objective=FreshnessObjective(target=0.9, period_days=1),
        burn_rate_threshold=2.0,
        windows=WINDOWS,
        since=SINCE,
    )


def update(firing: bool, *, event: bool, since: datetime | None = None) -> AlertUpdate:
    return AlertUpdate(
        feature="txn_count",
        alert="fast",
        owner="risk@example.com",
        firing=firing,
        since=since,
        long_window_s=20,
        short_window_s=5,
        burn_rate_threshold=2.0,
        long_burn_rate=7.5,
        short_burn_rate=10.0 if firing else 0.5,
        event=event_of(firing) if event else None,
    )


async def drain(relay: OutboxRelay, pool: asyncpg.Pool) -> None:
    async with asyncio.timeout(20):
        while await pool.fetchval("SELECT count(*) FROM outbox WHERE status <> 'delivered'"):
            if not await relay.run_once():
                await asyncio.sleep(0.05)


async def test_an_alert_event_goes_to_the_alerts_topic_with_the_feature_as_subject(
    alerts: FreshnessAlertStore,
    store: AuditStore,
    relay: OutboxRelay,
    pool: asyncpg.Pool,
    config: WritebackConfig,
) -> None:
    record = make_record(customer="c-1")
    await commit(store, record)
    async with alerts.evaluation() as evaluation:
        assert evaluation is not None
        [event_id] = await evaluation.apply([update(True, event=True)])

    row = await pool.fetchrow("SELECT * FROM outbox WHERE event_id = $1", event_id)
    assert row is not None
    # Not about a decision: its own id stands in the NOT NULL decision_id.
    assert (row["decision_id"], row["subject"], row["message_key"], row["topic"]) == (
        event_id,
        "txn_count",
        "txn_count",
        config.alerts_topic,
    )
    await drain(relay, pool)

    [message] = await consume(config.kafka_bootstrap, config.alerts_topic, expected=1)
    headers = {name: value.decode() for name, value in message.headers}
    assert headers["ce_subject"] == "txn_count"
    assert headers["ce_type"] == FRESHNESS_BREACHED
    assert headers["ce_id"] == str(event_id)
    assert message.key == b"txn_count"
    event = decoder.decode(message.value)
    assert isinstance(event, FreshnessBreached)
    assert (event.feature, event.alert, event.sla_ms) == ("txn_count", "fast", 5000)
    assert [w.window for w in event.windows] == ["long", "short"]

    [decision] = await consume(config.kafka_bootstrap, config.topic, expected=1)
    assert dict(decision.headers)["ce_subject"] == record.decision_id.encode()

    stages = await pool.fetch(
        "SELECT stage, topic FROM writeback_timeline WHERE event_id = $1 ORDER BY seq", event_id
    )
    assert [(s["stage"], s["topic"]) for s in stages] == [
        ("committed", config.alerts_topic),
        ("published", config.alerts_topic),
    ]
    # The outbox's other readers take the row as any other.
    stats = await DeadLetterQueue(pool, config).stats()
    assert (stats.pending, stats.dead_lettered) == (0, 0)


async def test_one_evaluation_at_a_time_across_callers(alerts: FreshnessAlertStore) -> None:
    async with alerts.evaluation() as first:
        assert first is not None
        async with alerts.evaluation() as second:
            assert second is None
    async with alerts.evaluation() as third:
        assert third is not None


async def test_states_and_changes_are_kept_and_read_back(
    alerts: FreshnessAlertStore, pool: asyncpg.Pool
) -> None:
    async with alerts.evaluation() as evaluation:
        assert evaluation is not None
        breached_at = evaluation.now
        [breached] = await evaluation.apply([update(True, event=True, since=breached_at)])
    async with alerts.evaluation() as evaluation:
        assert evaluation is not None
        states = await evaluation.states()
        assert states[("txn_count", "fast")].firing
        assert states[("txn_count", "fast")].since == breached_at
        # Evaluated again without a change: the rates move, the state and its event stay.
        assert (
            await evaluation.apply(
                [msgspec.structs.replace(update(True, event=False), since=breached_at)]
            )
            == []
        )
    report = await alerts.read(["txn_count"])
    [status] = report.alerts
    assert (status.firing, status.since, status.last_event_id) == (True, breached_at, str(breached))
    assert [c.event_id for c in report.changes] == [str(breached)]

    async with alerts.evaluation() as evaluation:
        assert evaluation is not None
        recovered_at = evaluation.now
        [recovered] = await evaluation.apply([update(False, event=True, since=recovered_at)])
    report = await alerts.read(["txn_count"])
    [status] = report.alerts
    assert (status.firing, status.since, status.short_burn_rate) == (False, recovered_at, 0.5)
    assert [(c.event_type, c.event_id) for c in report.changes] == [
        (FRESHNESS_RECOVERED, str(recovered)),
        (FRESHNESS_BREACHED, str(breached)),
    ]
    assert (await alerts.read(["another_feature"])).alerts == []
    queued = await pool.fetch("SELECT event_id FROM outbox ORDER BY seq")
    assert [row["event_id"] for row in queued] == [breached, recovered]
    assert recovered_at - breached_at >= timedelta(0)


async def test_an_evaluation_that_fails_stores_nothing(
    alerts: FreshnessAlertStore, pool: asyncpg.Pool
) -> None:
    with pytest.raises(RuntimeError):
        async with alerts.evaluation() as evaluation:
            assert evaluation is not None
            await evaluation.apply([update(True, event=True)])
            raise RuntimeError("the evaluator failed after storing")
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert await pool.fetchval("SELECT count(*) FROM freshness_alerts") == 0
    with pytest.raises(AuditUnavailable):
        async with alerts.evaluation() as evaluation:
            assert evaluation is not None
            await pool.execute("DROP TABLE freshness_alert_changes")
            await evaluation.apply([update(True, event=True)])


async def test_a_dead_lettered_alert_is_listed_redriven_and_purged_like_a_decision_event(
    alerts: FreshnessAlertStore, relay: OutboxRelay, pool: asyncpg.Pool, config: WritebackConfig
) -> None:
    async with alerts.evaluation() as evaluation:
        assert evaluation is not None
        [event_id] = await evaluation.apply([update(True, event=True)])
    # As the relay leaves an event no retry can fix.
    await pool.execute(
        "UPDATE outbox SET status = 'dead_lettered', dead_letter_reason = 'non_retriable',"
        " dead_lettered_at = now(), last_error = 'refused' WHERE event_id = $1",
        event_id,
    )
    queue = DeadLetterQueue(pool, config)
    [listed] = (await queue.list()).items
    assert (listed.event_id, listed.decision_id, listed.key, listed.topic) == (
        str(event_id),
        str(event_id),
        "txn_count",
        config.alerts_topic,
    )
    assert await queue.redrive(str(event_id), "operator-1") is not None
    await drain(relay, pool)
    [message] = await consume(config.kafka_bootstrap, config.alerts_topic, expected=1)
    assert dict(message.headers)["ce_subject"] == b"txn_count"

    later = datetime.now(UTC) + timedelta(hours=config.outbox_retention_hours + 1)
    report = await Retention(pool, config).run_once(now=later)
    assert report.rows_purged["outbox"] == 1
    stages = await pool.fetch(
        "SELECT stage FROM writeback_timeline WHERE event_id = $1 ORDER BY seq", event_id
    )
    assert [s["stage"] for s in stages] == ["committed", "redriven", "published"]
