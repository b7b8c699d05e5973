"""The audit store against a real PostgreSQL: group commit, idempotency, rollback."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest

from contracts.decisions import DecisionRecord, WritebackState
from contracts.events import DECISION_MADE, DECISION_ROLLED_BACK, OutcomeEvent
from tests.support.records import commit, make_event, make_record
from tests.support.tcp_proxy import TcpProxy
from writeback.audit_store import AuditStore, AuditUnavailable, RecordRefused, RequestMismatch
from writeback.config import WritebackConfig
from writeback.pool import create_pool

pytestmark = pytest.mark.services

event_decoder = msgspec.json.Decoder(OutcomeEvent)


@pytest.fixture
def config(database_url: str, topic: str) -> WritebackConfig:
    return WritebackConfig(database_url=database_url, kafka_bootstrap="127.0.0.1:9", topic=topic)


async def test_commit_writes_decision_and_outbox_row(
    store: AuditStore, pool: asyncpg.Pool, config: WritebackConfig
) -> None:
    record = make_record(customer="c-42")
    event = make_event(record)

    committed = await store.commit(record, event, "c-42")

    assert committed.decision_id == record.decision_id
    assert committed.committed_at is not None
    assert [(state.type, state.status, state.attempts) for state in committed.writeback] == [
        (DECISION_MADE, "pending", 0)
    ]
    decision = await pool.fetchrow("SELECT * FROM decisions")
    assert decision is not None
    assert str(decision["decision_id"]) == record.decision_id
    assert (decision["caller"], decision["request_id"]) == ("scorer-a", record.request_id)
    assert (decision["model_name"], decision["model_version"]) == ("credit", "3")
    assert (decision["subject_entity"], decision["subject_id"]) == ("customer", "c-42")
    assert decision["decided_at"] == record.decided_at
    assert msgspec.convert(decision["record"], DecisionRecord) == record
    outbox = await pool.fetch("SELECT * FROM outbox")
    assert len(outbox) == 1
    row = outbox[0]
    assert str(row["event_id"]) == committed.writeback[0].event_id
    assert (row["event_type"], row["topic"], row["message_key"]) == (
        DECISION_MADE,
        config.topic,
        "c-42",
    )
    assert (row["status"], row["attempts"], row["event_time"]) == ("pending", 0, record.decided_at)
    assert event_decoder.decode(row["payload"]) == event
    # One transaction: the decision and its event carry the same transaction time.
    assert row["created_at"] == decision["committed_at"] == committed.committed_at


async def test_stored_record_carries_no_live_state(store: AuditStore, pool: asyncpg.Pool) -> None:
    record = make_record(
        status="rolled_back",
        committed_at=datetime(2020, 1, 1, tzinfo=UTC),
        writeback=[
            WritebackState(
                event_id="x",
                type="t",
                status="delivered",
                attempts=9,
                topic="t",
                created_at=datetime(2020, 1, 1, tzinfo=UTC),
            )
        ],
    )

    await commit(store, record)

    stored = await pool.fetchval("SELECT record FROM decisions")
    assert stored["status"] == "made"
    assert stored["committed_at"] is None
    assert stored["writeback"] == []
    assert stored["rollback"] is None


async def test_concurrent_commits_share_transactions(store: AuditStore, pool: asyncpg.Pool) -> None:
    records = [make_record(customer=f"c-{n % 7}") for n in range(50)]

    committed = await asyncio.gather(*(commit(store, record) for record in records))

    assert [record.decision_id for record in committed] == [r.decision_id for r in records]
    assert store.transactions < len(records)
    assert await pool.fetchval("SELECT count(*) FROM decisions") == 50
    assert await pool.fetchval("SELECT count(DISTINCT decision_id) FROM outbox") == 50
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 50


async def test_repeated_request_returns_first_record(store: AuditStore, pool: asyncpg.Pool) -> None:
    first = make_record(request_id="req-same")
    retry = make_record(request_id="req-same", decision="decline")

    original = await commit(store, first)
    answer = await commit(store, retry)

    assert answer.decision_id == first.decision_id
    assert answer.decision == "approve"
    assert answer.writeback == original.writeback
    assert await pool.fetchval("SELECT count(*) FROM decisions") == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1


async def test_repeated_request_in_one_batch_writes_once(
    store: AuditStore, pool: asyncpg.Pool
) -> None:
    records = [make_record(request_id="req-burst", decision=f"d{n}") for n in range(5)]

    answers = await asyncio.gather(*(commit(store, record) for record in records))

    assert len({answer.decision_id for answer in answers}) == 1
    assert await pool.fetchval("SELECT count(*) FROM decisions") == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1


FINGERPRINT_A = b"a" * 32
FINGERPRINT_B = b"b" * 32


async def test_request_id_reused_for_another_request_is_refused(
    store: AuditStore, pool: asyncpg.Pool
) -> None:
    first = make_record(request_id="req-fp")
    original = await store.commit(first, make_event(first), "c-1", FINGERPRINT_A)
    other = make_record(request_id="req-fp", decision="decline")

    with pytest.raises(RequestMismatch) as refused:
        await store.commit(other, make_event(other), "c-1", FINGERPRINT_B)

    assert refused.value.existing.decision_id == first.decision_id
    with pytest.raises(RequestMismatch):
        await store.find_by_request(first.caller, "req-fp", FINGERPRINT_B)
    found = await store.find_by_request(first.caller, "req-fp", FINGERPRINT_A)
    assert found is not None
    assert found.decision_id == first.decision_id
    same = make_record(request_id="req-fp", decision="review")
    answer = await store.commit(same, make_event(same), "c-1", FINGERPRINT_A)
    assert (answer.decision_id, answer.writeback) == (first.decision_id, original.writeback)
    assert await pool.fetchval("SELECT fingerprint FROM decision_requests") == FINGERPRINT_A
    assert await pool.fetchval("SELECT count(*) FROM decisions") == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1


async def test_request_id_reused_in_one_batch_is_refused_for_the_other_request(
    store: AuditStore, pool: asyncpg.Pool
) -> None:
    records = [make_record(request_id="req-fp-burst", decision=f"d{n}") for n in range(4)]
    fingerprints = [FINGERPRINT_A, FINGERPRINT_B, FINGERPRINT_A, FINGERPRINT_B]

    outcomes = await asyncio.gather(
        *(
            store.commit(record, make_event(record), "c-1", fingerprint)
            for record, fingerprint in zip(records, fingerprints, strict=True)
        ),
        return_exceptions=True,
    )

    winner = await pool.fetchrow("SELECT decision_id::text, fingerprint FROM decision_requests")
    assert winner is not None
    for outcome, fingerprint in zip(outcomes, fingerprints, strict=True):
        if fingerprint == winner["fingerprint"]:
            assert isinstance(outcome, DecisionRecord)
            assert outcome.decision_id == winner["decision_id"]
        else:
            assert isinstance(outcome, RequestMismatch)
            assert outcome.existing.decision_id == winner["decision_id"]
    assert await pool.fetchval("SELECT count(*) FROM decisions") == 1


async def test_a_taken_request_id_in_a_batch_fails_none_of_its_neighbours(
    store: AuditStore, pool: asyncpg.Pool
) -> None:
    first = make_record(request_id="req-taken")
    original = await store.commit(first, make_event(first), "c-1", FINGERPRINT_A)
    same = make_record(request_id="req-taken", decision="review")
    other = make_record(request_id="req-taken", decision="decline")
    fresh = [make_record(request_id=f"req-new-{n}") for n in range(4)]
    batch = [(fresh[0], FINGERPRINT_A), (same, FINGERPRINT_A), (fresh[1], FINGERPRINT_A)]
    batch += [(other, FINGERPRINT_B), (fresh[2], FINGERPRINT_B), (fresh[3], FINGERPRINT_A)]
    before = store.transactions

    outcomes = await asyncio.gather(
        *(store.commit(record, make_event(record), "c-1", print_) for record, print_ in batch),
        return_exceptions=True,
    )

    assert store.transactions == before + 1
    answered = dict(zip([record.decision_id for record, _ in batch], outcomes, strict=True))
    for record in fresh:
        outcome = answered[record.decision_id]
        assert isinstance(outcome, DecisionRecord)
        assert outcome.decision_id == record.decision_id
    repeated = answered[same.decision_id]
    assert isinstance(repeated, DecisionRecord)
    assert (repeated.decision_id, repeated.writeback) == (first.decision_id, original.writeback)
    refused = answered[other.decision_id]
    assert isinstance(refused, RequestMismatch)
    assert refused.existing.decision_id == first.decision_id
    stored = await pool.fetch("SELECT decision_id::text FROM decisions")
    expected = {first.decision_id, *(record.decision_id for record in fresh)}
    assert {row["decision_id"] for row in stored} == expected
    events = await pool.fetch("SELECT decision_id::text FROM outbox")
    assert sorted(row["decision_id"] for row in events) == sorted(expected)


async def test_request_without_a_stored_fingerprint_answers_with_the_first(
    store: AuditStore,
) -> None:
    first = make_record(request_id="req-old")
    await commit(store, first)

    found = await store.find_by_request(first.caller, "req-old", FINGERPRINT_B)

    assert found is not None
    assert found.decision_id == first.decision_id


async def test_same_request_id_of_other_callers_are_distinct(
    store: AuditStore, pool: asyncpg.Pool
) -> None:
    await commit(store, make_record(request_id="req-1", caller="a"))
    await commit(store, make_record(request_id="req-1", caller="b"))

    assert await pool.fetchval("SELECT count(*) FROM decisions") == 2


async def test_bad_record_fails_alone(store: AuditStore, pool: asyncpg.Pool) -> None:
    good = [make_record() for _ in range(4)]
    # PostgreSQL text cannot hold NUL: this record is refused, before it is queued.
    bad = make_record(request_id="req-\x00")

    results = await asyncio.gather(
        *(commit(store, record) for record in [*good[:2], bad, *good[2:]]),
        return_exceptions=True,
    )

    assert isinstance(results[2], RecordRefused)
    assert results[2].field == "request_id"
    assert [r.decision_id for r in results if isinstance(r, DecisionRecord)] == [
        r.decision_id for r in good
    ]
    assert await pool.fetchval("SELECT count(*) FROM decisions") == 4
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 4


async def test_a_row_postgresql_refuses_fails_alone_and_the_rest_of_its_batch_commits(
    store: AuditStore, pool: asyncpg.Pool
) -> None:
    records = [make_record(customer=f"c-{n}") for n in range(8)]
    # The Kafka key is no part of the record's JSON: only PostgreSQL finds its NUL, when
    # the batch that carries it fails.
    keys = [record.subject.id for record in records]
    keys[2] = "c-\x00"
    before = store.transactions

    # Queued in one go, the eight share a batch: the writer wakes only after all of them.
    results = await asyncio.gather(
        *(
            store.commit(record, make_event(record), key)
            for record, key in zip(records, keys, strict=True)
        ),
        return_exceptions=True,
    )

    refused = results[2]
    assert isinstance(refused, RecordRefused), refused
    assert refused.field == "key"
    assert isinstance(refused.cause, asyncpg.DataError)
    good = [record.decision_id for n, record in enumerate(records) if n != 2]
    assert [r.decision_id for r in results if isinstance(r, DecisionRecord)] == good
    stored = await pool.fetch("SELECT decision_id FROM decisions")
    assert sorted(str(row["decision_id"]) for row in stored) == sorted(good)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 7
    # The good halves of the batch committed together, not one transaction each.
    assert store.transactions - before < len(good)


async def test_a_record_whose_json_holds_a_nul_is_refused_before_it_is_written(
    store: AuditStore, pool: asyncpg.Pool
) -> None:
    record = make_record()
    ((lineage_id, lineage),) = record.lineage.items()
    # The json column would take "\u0000", but PostgreSQL's JSON operators (->>, as
    # the decision search uses them) fail on every read of such a record.
    poisoned = msgspec.structs.replace(
        record,
        lineage={lineage_id: msgspec.structs.replace(lineage, source_ref="txn/\x00/17")},
    )
    # A backslash followed by "u0000" is text like any other.
    literal = make_record(decision_rule="matches \\u0000 literally")

    with pytest.raises(RecordRefused) as raised:
        await commit(store, poisoned)
    committed = await commit(store, literal)

    assert raised.value.field == f"lineage.{lineage_id}.source_ref"
    assert raised.value.cause is None
    assert committed.decision_rule == "matches \\u0000 literally"
    rows = await pool.fetch("SELECT decision_id, record ->> 'decision_rule' AS rule FROM decisions")
    assert [(str(row["decision_id"]), row["rule"]) for row in rows] == [
        (literal.decision_id, "matches \\u0000 literally")
    ]


async def test_commit_without_postgres_raises_and_recovers(
    database_url: str, topic: str, pool: asyncpg.Pool
) -> None:
    proxy = TcpProxy()
    await proxy.start()
    proxied = proxy.dsn(database_url)
    config = WritebackConfig(
        database_url=proxied, kafka_bootstrap="127.0.0.1:9", topic=topic, pool_min_size=1
    )
    proxied_pool = await create_pool(config)
    store = AuditStore(proxied_pool, config)
    await store.start()
    try:
        await commit(store, make_record())
        await proxy.stop()
        lost = make_record()

        with pytest.raises(AuditUnavailable) as raised:
            await commit(store, lost)
        assert raised.value.cause is not None
        with pytest.raises(AuditUnavailable):
            await store.ping()
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM decisions WHERE decision_id = $1", uuid.UUID(lost.decision_id)
            )
            == 0
        )

        await proxy.start()
        await commit(store, make_record())
        await store.ping()
    finally:
        await store.close()
        await proxied_pool.close()
        await proxy.stop()
    assert await pool.fetchval("SELECT count(*) FROM decisions") == 2
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2


async def test_get_fills_in_live_state(store: AuditStore, pool: asyncpg.Pool) -> None:
    record = make_record()
    committed = await commit(store, record)
    await pool.execute(
        """
        UPDATE outbox SET status = 'delivered', attempts = 2, "partition" = 1, "offset" = 7,
                          delivered_at = now(), last_error = 'KafkaConnectionError: down'
        """
    )

    found = await store.get(record.decision_id)

    assert found is not None
    assert found.committed_at == committed.committed_at
    assert found.status == "made"
    assert found.rollback is None
    [state] = found.writeback
    assert state.event_id == committed.writeback[0].event_id
    assert (state.type, state.status, state.attempts, state.partition, state.offset) == (
        DECISION_MADE,
        "delivered",
        2,
        1,
        7,
    )
    assert state.delivered_at is not None
    assert state.created_at == committed.writeback[0].created_at
    assert state.last_error == "KafkaConnectionError: down"
    assert [(entry.stage, entry.event_id) for entry in found.timeline] == [
        ("committed", state.event_id)
    ]
    assert msgspec.structs.replace(found, committed_at=None, writeback=[], timeline=[]) == record
    assert await store.find_by_request(record.caller, record.request_id) == found


async def test_get_unknown_or_malformed_id(store: AuditStore) -> None:
    assert await store.get(str(uuid.uuid4())) is None
    assert await store.get("not-a-uuid") is None
    assert await store.find_by_request("scorer-a", "never") is None


async def test_rollback_queues_event_after_the_decision(
    store: AuditStore, pool: asyncpg.Pool
) -> None:
    record = make_record(customer="c-9")
    await commit(store, record)

    answer = await store.rollback(record.decision_id, "wrong model version", "ops-1")

    assert answer is not None
    state, created = answer
    assert created is True
    assert (state.decision_id, state.reason, state.rolled_back_by) == (
        record.decision_id,
        "wrong model version",
        "ops-1",
    )
    rows = await pool.fetch("SELECT * FROM outbox ORDER BY seq")
    assert [row["event_type"] for row in rows] == [DECISION_MADE, DECISION_ROLLED_BACK]
    made, rolled = rows
    assert (rolled["message_key"], rolled["topic"]) == (made["message_key"], made["topic"])
    assert str(rolled["event_id"]) == state.event_id
    event = event_decoder.decode(rolled["payload"])
    assert event == msgspec.convert(
        {
            "type": DECISION_ROLLED_BACK,
            "decision_id": record.decision_id,
            "request_id": record.request_id,
            "model": {"name": "credit", "version": "3"},
            "subject": {"entity": "customer", "key": "customer_id", "id": "c-9"},
            "reason": "wrong model version",
            "rolled_back_by": "ops-1",
            "rolled_back_at": state.rolled_back_at,
        },
        OutcomeEvent,
    )
    found = await store.get(record.decision_id)
    assert found is not None
    assert found.status == "rolled_back"
    assert found.rollback == state
    assert [item.type for item in found.writeback] == [DECISION_MADE, DECISION_ROLLED_BACK]


async def test_second_rollback_answers_with_the_first(
    store: AuditStore, pool: asyncpg.Pool
) -> None:
    record = make_record()
    await commit(store, record)

    first = await store.rollback(record.decision_id, "first", "ops-1")
    second = await store.rollback(record.decision_id, "second", "ops-2")

    assert first is not None
    assert second is not None
    assert first[1] is True
    assert second == (first[0], False)
    assert await pool.fetchval("SELECT count(*) FROM rollbacks") == 1
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE event_type = $1", DECISION_ROLLED_BACK
        )
        == 1
    )


async def test_concurrent_rollbacks_write_one_event(store: AuditStore, pool: asyncpg.Pool) -> None:
    record = make_record()
    await commit(store, record)

    answers = await asyncio.gather(
        *(store.rollback(record.decision_id, f"reason {n}", f"ops-{n}") for n in range(8))
    )

    created = [answer for answer in answers if answer is not None and answer[1]]
    assert len(created) == 1
    assert all(answer == (created[0][0], False) for answer in answers if answer not in created)
    assert await pool.fetchval("SELECT count(*) FROM rollbacks") == 1
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE event_type = $1", DECISION_ROLLED_BACK
        )
        == 1
    )


async def test_rollback_of_unknown_decision(store: AuditStore) -> None:
    assert await store.rollback(str(uuid.uuid4()), "r", "ops") is None
    assert await store.rollback("nope", "r", "ops") is None


async def test_close_commits_what_is_queued(pool: asyncpg.Pool, config: WritebackConfig) -> None:
    store = AuditStore(pool, config)
    await store.start()
    commits = [asyncio.create_task(commit(store, make_record())) for _ in range(20)]
    await asyncio.sleep(0)

    await store.close()

    assert len(await asyncio.gather(*commits)) == 20
    assert await pool.fetchval("SELECT count(*) FROM decisions") == 20
    with pytest.raises(AuditUnavailable):
        await commit(store, make_record())


async def test_ping(store: AuditStore) -> None:
    await store.ping()
