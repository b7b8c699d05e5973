"""Tamper evidence: a hash chain over decision records.

A sealer appends, in the order decisions were inserted (a trigger queues each one),
one seal per committed decision:
``hash = sha256(previous seal's hash || the record's JSON text)``, the text byte for
byte as committed (the column is ``json``, which keeps it verbatim). Editing a record,
deleting it, or editing a seal breaks the chain at that point, and :func:`verify`
names the first record where it breaks.

Sealing runs beside the commit path, not in it: the request path pays nothing, many
gateway processes can commit at once, and one sealer at a time (an advisory lock)
extends the single chain. Records younger than the sealer's last pass are reported
as unsealed rather than checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from datetime import datetime

import asyncpg

from contracts.audit import VerifyReport

log = logging.getLogger(__name__)

GENESIS = bytes(32)
_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('scoregate_decision_seals'))"
_HEAD = "SELECT seq, hash FROM decision_seals ORDER BY seq DESC LIMIT 1"
# A trigger queues every inserted decision; the sealer takes the queue in order. A
# decision gone before its turn (dropped by retention) is skipped.
_TAKE = """
WITH taken AS (
    DELETE FROM decision_seal_queue
    WHERE seq IN (SELECT seq FROM decision_seal_queue ORDER BY seq LIMIT $1)
    RETURNING seq, decision_id, committed_at
)
SELECT t.seq, t.decision_id, t.committed_at, d.record::text AS record
FROM taken AS t
LEFT JOIN decisions AS d ON d.decision_id = t.decision_id AND d.committed_at = t.committed_at
ORDER BY t.seq
"""
_INSERT = """
INSERT INTO decision_seals (seq, decision_id, committed_at, prev_hash, hash)
SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[], $4::bytea[], $5::bytea[])
"""
_WALK = """
SELECT s.seq, s.decision_id, s.committed_at, s.prev_hash, s.hash, d.record::text AS record
FROM decision_seals AS s
LEFT JOIN decisions AS d
       ON d.decision_id = s.decision_id AND d.committed_at = s.committed_at
WHERE s.seq > $1
ORDER BY s.seq
LIMIT $2
"""
_START = """
SELECT seq, hash FROM decision_seals WHERE committed_at < $1 ORDER BY seq DESC LIMIT 1
"""
_UNSEALED_COUNT = "SELECT count(*) FROM decision_seal_queue"
_OLDEST_RETAINED = "SELECT min(committed_at) FROM decisions"


def link(prev_hash: bytes, record_text: str) -> bytes:
    """The seal of a record that follows ``prev_hash``."""
    return hashlib.sha256(prev_hash + record_text.encode()).digest()


class DecisionSealer:
    """Extends the chain with every newly committed decision, in the background."""

    def __init__(self, pool: asyncpg.Pool, interval_s: float = 1.0, batch: int = 1000) -> None:
        self._pool = pool
        self._interval_s = interval_s
        self._batch = batch
        self._task: asyncio.Task[None] | None = None

    async def seal_once(self) -> int:
        """Seal what is unsealed (up to a batch); returns how many were sealed."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(_LOCK):
                return 0  # another sealer holds the chain
            rows = await conn.fetch(_TAKE, self._batch)
            if not rows:
                return 0
            head = await conn.fetchrow(_HEAD)
            seq, prev = (head["seq"], bytes(head["hash"])) if head else (0, GENESIS)
            seqs, ids, times, prevs, hashes = [], [], [], [], []
            for row in rows:
                if row["record"] is None:
                    continue
                seq += 1
                digest = link(prev, row["record"])
                seqs.append(seq)
                ids.append(row["decision_id"])
                times.append(row["committed_at"])
                prevs.append(prev)
                hashes.append(digest)
                prev = digest
            if seqs:
                await conn.execute(_INSERT, seqs, ids, times, prevs, hashes)
            return len(rows)

    async def _run(self) -> None:
        while True:
            try:
                while await self.seal_once() >= self._batch:
                    pass
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("sealing decisions failed, retrying: %s", exc)
            await asyncio.sleep(self._interval_s)

    async def start(self) -> None:
        """Seal in the background until stopped."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="decision-sealer")

    async def stop(self) -> None:
        """Stop sealing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def verify(pool: asyncpg.Pool, since: datetime | None = None) -> VerifyReport:
    """Walk the chain (from the last seal before ``since``, if given) and check it."""
    async with pool.acquire() as conn:
        seq, prev = 0, GENESIS
        if since is not None:
            start = await conn.fetchrow(_START, since)
            if start is not None:
                seq, prev = start["seq"], bytes(start["hash"])
        oldest = await conn.fetchval(_OLDEST_RETAINED)
        checked = 0
        while True:
            rows = await conn.fetch(_WALK, seq, 5000)
            if not rows:
                break
            for row in rows:
                decision_id = str(row["decision_id"])
                problem = _check(row, prev, oldest)
                if problem is not None:
                    unsealed = await conn.fetchval(_UNSEALED_COUNT)
                    return VerifyReport(
                        ok=False,
                        checked=checked,
                        unsealed=unsealed,
                        first_mismatch=decision_id,
                        reason=problem,
                        chain_head=prev.hex(),
                    )
                seq, prev = row["seq"], bytes(row["hash"])
                checked += 1
        unsealed = await conn.fetchval(_UNSEALED_COUNT)
    return VerifyReport(ok=True, checked=checked, unsealed=unsealed, chain_head=prev.hex())


def _check(row: asyncpg.Record, prev: bytes, oldest: datetime | None) -> str | None:
    if bytes(row["prev_hash"]) != prev:
        return "seal does not link to the previous seal"
    if row["record"] is None:
        if oldest is not None and row["committed_at"] < oldest:
            return None  # dropped by retention with its whole partition
        return "record is missing"
    if link(prev, row["record"]) != bytes(row["hash"]):
        return "record does not match its seal"
    return None
