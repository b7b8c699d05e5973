"""Reconciliation runs in PostgreSQL: stored whole, read back latest per feature, the
checks of a decision's served values, retention, and the per-source run lock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from contracts.reconciliation import Finding, FindingKind, ReconciliationRun
from writeback import ReconciliationStore

pytestmark = pytest.mark.services

NOW = datetime.now(UTC)


@pytest.fixture
async def runs(database_url: str) -> AsyncIterator[ReconciliationStore]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield ReconciliationStore(pool, database_url)
    await pool.close()


def finding(
    entity_id: str,
    kind: FindingKind,
    lineage_id: str,
    found_at: datetime = NOW,
    source_value: object = 4,
) -> Finding:
    return Finding(
        entity="customer",
        entity_id=entity_id,
        kind=kind,
        stored_value=3,
        source_value=source_value,  # type: ignore[arg-type]
        stored_event_time=found_at - timedelta(minutes=1),
        source_event_time=found_at,
        stored_lineage_id=lineage_id,
        source_ref=f"txn_stats:{entity_id}",
        found_at=found_at,
    )


def run(feature: str, findings: list[Finding], finished_at: datetime = NOW) -> ReconciliationRun:
    kinds = [f.kind for f in findings]
    return ReconciliationRun(
        run_id=str(uuid.uuid4()),
        feature=feature,
        source="txn_stats",
        started_at=finished_at - timedelta(seconds=2),
        finished_at=finished_at,
        repair=False,
        sampled=len(findings),
        checked=len(findings),
        matched=sum(k in ("match", "newer_at_source") for k in kinds),
        mismatched=kinds.count("mismatch"),
        newer_at_source=0,
        missing_in_store=kinds.count("missing_in_store"),
        missing_at_source=kinds.count("missing_at_source"),
        repaired=0,
        errors=0,
        source_calls=len(findings),
        findings=[f for f in findings if f.kind != "match"],
    )


async def test_latest_run_per_feature_lists_what_did_not_match(
    runs: ReconciliationStore,
) -> None:
    older = run("txn_count_30m", [finding("c-1", "mismatch", "lin_a")], NOW - timedelta(hours=1))
    newer_findings = [
        finding("c-2", "match", "lin_b"),
        finding("c-3", "mismatch", "lin_c", source_value="x"),
        finding("c-4", "missing_at_source", "lin_d", source_value=None),
    ]
    newer = run("txn_count_30m", newer_findings)
    other_findings = [finding("c-1", "match", "lin_e", source_value=1.5)]
    other = run("txn_amount_sum_24h", other_findings)
    await runs.save(older, older.findings)
    await runs.save(newer, newer_findings)
    await runs.save(other, other_findings)

    latest = await runs.latest(["txn_count_30m", "txn_amount_sum_24h", "kyc_level"])

    assert [r.run_id for r in latest] == [newer.run_id, other.run_id]
    assert latest[0].mismatched == 1 and latest[0].missing_at_source == 1
    assert [(f.entity_id, f.kind) for f in latest[0].findings] == [
        ("c-3", "mismatch"),
        ("c-4", "missing_at_source"),
    ]
    assert latest[0].findings[0].source_value == "x"
    assert latest[0].findings[1].source_value is None
    assert latest[1].findings == []
    limited = await runs.latest(["txn_count_30m"], findings_per_run=1)
    assert len(limited[0].findings) == 1


async def test_checks_find_the_runs_that_read_the_served_value(
    runs: ReconciliationStore,
) -> None:
    early, late = NOW - timedelta(minutes=30), NOW
    await runs.save(
        run("txn_count_30m", []),
        [finding("c-1", "mismatch", "lin_served", early, source_value=9)],
    )
    await runs.save(run("txn_count_30m", []), [finding("c-1", "match", "lin_served", late)])
    # Another value of the same entity, and the same lineage id of another entity.
    await runs.save(run("txn_count_30m", []), [finding("c-1", "mismatch", "lin_later", late)])
    await runs.save(run("txn_count_30m", []), [finding("c-2", "mismatch", "lin_agrees", late)])
    await runs.save(run("kyc_level", []), [finding("c-2", "match", "lin_agrees", late)])

    checks = await runs.checks(
        [
            ("txn_count_30m", "c-1", "lin_served"),
            ("kyc_level", "c-2", "lin_agrees"),
            ("txn_amount_sum_24h", "c-1", "lin_never_checked"),
        ]
    )

    assert set(checks) == {"txn_count_30m", "kyc_level"}
    # A disagreement outranks a later agreement of the same served value.
    assert checks["txn_count_30m"].kind == "mismatch"
    assert not checks["txn_count_30m"].agrees
    assert checks["txn_count_30m"].source_value == 9
    assert checks["kyc_level"].agrees and checks["kyc_level"].kind == "match"
    assert await runs.checks([]) == {}


async def test_runs_past_the_retention_go_with_their_findings(
    runs: ReconciliationStore, database_url: str
) -> None:
    old = run("txn_count_30m", [], NOW - timedelta(days=40))
    await runs.save(old, [finding("c-1", "mismatch", "lin_a", NOW - timedelta(days=40))])
    kept = run("txn_count_30m", [], NOW)
    await runs.save(kept, [finding("c-1", "mismatch", "lin_b")])

    assert await runs.drop_before(NOW - timedelta(days=30)) == 1

    conn = await asyncpg.connect(database_url)
    try:
        left = await conn.fetch("SELECT run_id FROM reconciliation_findings")
    finally:
        await conn.close()
    assert [str(row["run_id"]) for row in left] == [kept.run_id]


async def test_one_run_per_source_holds_the_lock_across_connections(
    runs: ReconciliationStore, database_url: str
) -> None:
    other_process = ReconciliationStore(runs._pool, database_url)
    async with runs.lock("txn_stats", wait=False) as held:
        assert held
        async with other_process.lock("txn_stats", wait=False) as second:
            assert not second
        async with other_process.lock("customer_profile", wait=False) as elsewhere:
            assert elsewhere
        waiting = asyncio.create_task(_hold(other_process))
        await asyncio.sleep(0.2)
        assert not waiting.done()
    assert await asyncio.wait_for(waiting, 5) is True
    async with other_process.lock("txn_stats", wait=False) as again:
        assert again


async def _hold(store: ReconciliationStore) -> bool:
    async with store.lock("txn_stats", wait=True) as held:
        return held
