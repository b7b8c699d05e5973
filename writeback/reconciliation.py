"""Reconciliation runs and their findings in PostgreSQL, and the lock runs share.

A run is stored whole when it ends: its row and one finding per entity it checked
(agreements too, so that the auditor's read of a decision can say a served value was
checked and agreed), in one statement each. The latest run of each feature answers
``GET /reconciliation``; :meth:`ReconciliationStore.checks` answers, for the values a
decision served, what the runs that read those very values (the same lineage id)
found. Runs past the retention are deleted with their findings.

Runs against one source take turns across every process: each holds a session-level
advisory lock for the source on a connection of its own for as long as it runs, so
the source's budget of calls per second holds for all of them together, and a
process that dies lets go of its lock with its connection.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
import msgspec

from contracts.decisions import FeatureCheck
from contracts.features import FeatureScalar
from contracts.reconciliation import Finding, ReconciliationRun
from writeback.errors import unavailable_on_error

_INSERT_RUN = """
INSERT INTO reconciliation_runs (
    run_id, feature, source, started_at, finished_at, repair, sampled, checked, matched,
    mismatched, newer_at_source, missing_in_store, missing_at_source, repaired, errors,
    source_calls, stopped_reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
"""
# One statement for a run's findings, whatever their number: a column per array.
_INSERT_FINDINGS = """
INSERT INTO reconciliation_findings (
    run_id, feature, entity, entity_id, kind, stored_value, source_value,
    stored_event_time, source_event_time, stored_lineage_id, source_ref, repaired,
    repair_outcome, found_at)
SELECT $1, $2, f.entity, f.entity_id, f.kind, f.stored_value::jsonb, f.source_value::jsonb,
       f.stored_event_time, f.source_event_time, f.stored_lineage_id, f.source_ref,
       f.repaired, f.repair_outcome, f.found_at
FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[],
            $9::timestamptz[], $10::text[], $11::text[], $12::boolean[], $13::text[],
            $14::timestamptz[])
     AS f (entity, entity_id, kind, stored_value, source_value, stored_event_time,
           source_event_time, stored_lineage_id, source_ref, repaired, repair_outcome,
           found_at)
"""
# The latest run of each feature asked for (the index gives each in one probe), and
# the first findings of each that did not match.
_LATEST_RUNS = """
SELECT r.*
FROM unnest($1::text[]) AS q (feature)
CROSS JOIN LATERAL (
    SELECT * FROM reconciliation_runs AS r
    WHERE r.feature = q.feature ORDER BY r.finished_at DESC LIMIT 1
) AS r
"""
_RUN_FINDINGS = """
SELECT q.run_id, f.entity, f.entity_id, f.kind, f.stored_value::text AS stored_value,
       f.source_value::text AS source_value, f.stored_event_time, f.source_event_time,
       f.stored_lineage_id, f.source_ref, f.repaired, f.repair_outcome, f.found_at
FROM unnest($1::uuid[]) AS q (run_id)
CROSS JOIN LATERAL (
    SELECT * FROM reconciliation_findings AS f
    WHERE f.run_id = q.run_id AND f.kind <> 'match'
    ORDER BY f.entity_id LIMIT $2
) AS f
"""
# Per (feature, entity id, lineage id) of a decision's served values, the finding of
# a run that read that very value: a disagreement before an agreement, then the latest.
_CHECKS = """
SELECT q.feature, f.run_id, f.found_at, f.kind, f.source_value::text AS source_value,
       f.source_event_time, f.repaired
FROM unnest($1::text[], $2::text[], $3::text[]) AS q (feature, entity_id, lineage_id)
CROSS JOIN LATERAL (
    SELECT run_id, found_at, kind, source_value, source_event_time, repaired
    FROM reconciliation_findings AS f
    WHERE f.feature = q.feature AND f.entity_id = q.entity_id
      AND f.stored_lineage_id = q.lineage_id
    ORDER BY f.kind IN ('match', 'newer_at_source'), f.found_at DESC
    LIMIT 1
) AS f
"""
_DROP_BEFORE = "DELETE FROM reconciliation_runs WHERE finished_at < $1"
_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('scoregate_reconcile:' || $1))"
_LOCK = "SELECT pg_advisory_lock(hashtext('scoregate_reconcile:' || $1))"

AGREEING = frozenset({"match", "newer_at_source"})
"""Finding kinds in which the stored value agrees with the source's."""

_encode = msgspec.json.Encoder().encode
_decode_scalar = msgspec.json.Decoder(FeatureScalar | None).decode


def _json(value: FeatureScalar | None) -> str | None:
    return None if value is None else _encode(value).decode()


def _scalar(text: str | None) -> FeatureScalar | None:
    return None if text is None else _decode_scalar(text)


def _finding(row: asyncpg.Record) -> Finding:
    return Finding(
        entity=row["entity"],
        entity_id=row["entity_id"],
        kind=row["kind"],
        stored_value=_scalar(row["stored_value"]),
        source_value=_scalar(row["source_value"]),
        stored_event_time=row["stored_event_time"],
        source_event_time=row["source_event_time"],
        stored_lineage_id=row["stored_lineage_id"],
        source_ref=row["source_ref"],
        repaired=row["repaired"],
        repair_outcome=row["repair_outcome"],
        found_at=row["found_at"],
    )


class ReconciliationStore:
    """Stores and reads reconciliation runs; hands out the per-source run lock.

    Every method raises :class:`~writeback.errors.AuditUnavailable` when PostgreSQL
    cannot be reached or refuses the statement.

    Args:
        pool: The shared pool (one statement per call).
        database_url: Where the run locks' own connections go.
    """

    def __init__(self, pool: asyncpg.Pool, database_url: str) -> None:
        self._pool = pool
        self._database_url = database_url

    async def save(self, run: ReconciliationRun, findings: Sequence[Finding]) -> None:
        """Store a finished run and every finding of it, in one transaction.

        Args:
            run: The run (its own ``findings`` are not stored: ``findings`` are).
            findings: One per entity the run checked.
        """
        run_id = uuid.UUID(run.run_id)
        columns: list[list[object]] = [[] for _ in range(12)]
        for f in findings:
            row = (
                f.entity,
                f.entity_id,
                f.kind,
                _json(f.stored_value),
                _json(f.source_value),
                f.stored_event_time,
                f.source_event_time,
                f.stored_lineage_id,
                f.source_ref,
                f.repaired,
                f.repair_outcome,
                f.found_at,
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        with unavailable_on_error("store the reconciliation run"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    _INSERT_RUN,
                    run_id,
                    run.feature,
                    run.source,
                    run.started_at,
                    run.finished_at,
                    run.repair,
                    run.sampled,
                    run.checked,
                    run.matched,
                    run.mismatched,
                    run.newer_at_source,
                    run.missing_in_store,
                    run.missing_at_source,
                    run.repaired,
                    run.errors,
                    run.source_calls,
                    run.stopped_reason,
                )
                if findings:
                    await conn.execute(_INSERT_FINDINGS, run_id, run.feature, *columns)

    async def latest(
        self, features: Sequence[str], findings_per_run: int = 100
    ) -> list[ReconciliationRun]:
        """The latest run of each feature named, with its first findings that did not match.

        Args:
            features: Feature names, in the order the answer keeps.
            findings_per_run: Findings listed per run at most (by entity id).

        Returns:
            One run per feature that has any, in the order of ``features``.
        """
        with unavailable_on_error("read the reconciliation runs"):
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(_LATEST_RUNS, list(features))
                found = await conn.fetch(
                    _RUN_FINDINGS, [row["run_id"] for row in rows], findings_per_run
                )
        by_run: dict[uuid.UUID, list[Finding]] = {}
        for row in found:
            by_run.setdefault(row["run_id"], []).append(_finding(row))
        return [
            ReconciliationRun(
                run_id=str(row["run_id"]),
                feature=row["feature"],
                source=row["source"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
                repair=row["repair"],
                sampled=row["sampled"],
                checked=row["checked"],
                matched=row["matched"],
                mismatched=row["mismatched"],
                newer_at_source=row["newer_at_source"],
                missing_in_store=row["missing_in_store"],
                missing_at_source=row["missing_at_source"],
                repaired=row["repaired"],
                errors=row["errors"],
                source_calls=row["source_calls"],
                stopped_reason=row["stopped_reason"],
                findings=by_run.get(row["run_id"], []),
            )
            for row in rows
        ]

    async def checks(self, served: Sequence[tuple[str, str, str]]) -> dict[str, FeatureCheck]:
        """What reconciliation found of served values, by feature (see :func:`feature_checks`)."""
        return await feature_checks(self._pool, served)

    async def drop_before(self, cutoff: datetime) -> int:
        """Delete the runs that finished before ``cutoff``, with their findings.

        Returns:
            How many runs were deleted.
        """
        with unavailable_on_error("drop old reconciliation runs"):
            status = await self._pool.execute(_DROP_BEFORE, cutoff)
        return int(status.rsplit(" ", 1)[-1])

    @asynccontextmanager
    async def lock(self, source: str, *, wait: bool) -> AsyncIterator[bool]:
        """Hold the run lock of ``source`` for the body, across every process.

        The lock is a session-level advisory lock on a connection of its own, held
        until the body ends (or the connection, or the process, dies).

        Args:
            source: The source whose calls the run spends.
            wait: Wait for a run holding it to end; else yield False at once.

        Yields:
            Whether the lock is held (always True with ``wait``).
        """
        with unavailable_on_error("take the reconciliation lock"):
            conn = await asyncpg.connect(self._database_url)
        try:
            with unavailable_on_error("take the reconciliation lock"):
                if wait:
                    await conn.execute(_LOCK, source)
                    held = True
                else:
                    held = bool(await conn.fetchval(_TRY_LOCK, source))
            yield held
        finally:
            # Closing the session lets go of its lock.
            await conn.close()


async def feature_checks(
    pool: asyncpg.Pool, served: Sequence[tuple[str, str, str]]
) -> dict[str, FeatureCheck]:
    """What reconciliation found of served values, by feature.

    Args:
        pool: The shared pool.
        served: ``(feature, entity id, lineage id)`` of each value served.

    Returns:
        Per feature that a run covered (a run read the value with that lineage id
        from the online store), the check: a disagreement before an agreement, then
        the latest.

    Raises:
        AuditUnavailable: PostgreSQL could not be reached or refused the statement.
    """
    if not served:
        return {}
    features, entity_ids, lineage_ids = (list(column) for column in zip(*served, strict=True))
    with unavailable_on_error("read the reconciliation findings"):
        rows = await pool.fetch(_CHECKS, features, entity_ids, lineage_ids)
    return {
        row["feature"]: FeatureCheck(
            run_id=str(row["run_id"]),
            found_at=row["found_at"],
            kind=row["kind"],
            agrees=row["kind"] in AGREEING,
            source_value=_scalar(row["source_value"]),
            source_event_time=row["source_event_time"],
            repaired=row["repaired"],
        )
        for row in rows
    }
