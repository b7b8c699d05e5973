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

Both run inside the gateway's process, beside ``/score``: the hashing (CPU work,
thousands of records a batch) runs on a thread of its own, so the event loop only
waits for it, and :func:`verify` walks the chain in keyset batches, each read on a
pooled connection it gives back before hashing, so a walk of millions of records
holds no connection or transaction for long and keeps one batch in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TypeVar

import asyncpg

from contracts.audit import VerifyReport

log = logging.getLogger(__name__)

T = TypeVar("T")

GENESIS = bytes(32)
WALK_BATCH = 1000
"""Seals :func:`verify` reads and checks per round trip."""
# One thread for all chain hashing in the process: sealing and any number of verifies
# queue for it, so together they take at most one core's worth from the gateway.
# hashlib lets go of the interpreter lock while it hashes a record (over 2 kB), so the
# loop's thread gets it back within microseconds.
_HASHING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoregate-seals")

# Records travel as their UTF-8 bytes (what is hashed), and only the columns the client
# needs travel at all: decoding and encoding rows is the part of the work that stays
# on the event loop, and timestamps and text are the dear ones.
_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('scoregate_decision_seals'))"
_HEAD = "SELECT seq, hash FROM decision_seals ORDER BY seq DESC LIMIT 1"
# A trigger queues every inserted decision; the sealer takes the queue in order. A
# decision gone before its turn (dropped by retention) is skipped. Only the sealer
# holding the lock takes from the queue, so what it reads is still there to delete.
_TAKE = """
SELECT q.seq, convert_to(d.record::text, 'UTF8') AS record
FROM (SELECT seq, decision_id, committed_at FROM decision_seal_queue ORDER BY seq LIMIT $1) AS q
LEFT JOIN decisions AS d ON d.decision_id = q.decision_id AND d.committed_at = q.committed_at
ORDER BY q.seq
"""
# The batch's seals go as one statement whose arguments cost the loop a copy each,
# whatever the batch's size: queue positions as comma-separated text, and the chain
# as one run of hashes, the head's first, so seal n's prev_hash is hash n - 1 of it.
_SEAL = """
WITH taken AS (
    DELETE FROM decision_seal_queue WHERE seq = ANY(string_to_array($1, ',')::bigint[])
    RETURNING seq, decision_id, committed_at
)
INSERT INTO decision_seals (seq, decision_id, committed_at, prev_hash, hash)
SELECT $3::bigint + c.n, t.decision_id, t.committed_at,
       substring($4::bytea FROM (c.n - 1)::int * 32 + 1 FOR 32),
       substring($4::bytea FROM c.n::int * 32 + 1 FOR 32)
FROM unnest(string_to_array($2, ',')::bigint[]) WITH ORDINALITY AS c (queued, n)
JOIN taken AS t ON t.seq = c.queued
"""
# The batch is limited before the join: over the whole table the planner expects
# half the chain and plans parallel workers per batch, and this way the join keeps
# the seals' order, so nothing sorts the records. Whether a missing record went with
# a partition retention dropped is decided in the batch's own snapshot, so a drop
# while a long walk runs excuses its records rather than reporting them missing.
_WALK = """
SELECT s.seq, s.decision_id, s.prev_hash, s.hash,
       convert_to(d.record::text, 'UTF8') AS record,
       d.decision_id IS NULL
           AND coalesce(s.committed_at < (SELECT min(committed_at) FROM decisions), false)
           AS retained_away
FROM (
    SELECT seq, decision_id, committed_at, prev_hash, hash
    FROM decision_seals WHERE seq > $1 ORDER BY seq LIMIT $2
) AS s
LEFT JOIN decisions AS d
       ON d.decision_id = s.decision_id AND d.committed_at = s.committed_at
ORDER BY s.seq
"""
_START = """
SELECT seq, hash FROM decision_seals WHERE committed_at < $1 ORDER BY seq DESC LIMIT 1
"""
_UNSEALED_COUNT = "SELECT count(*) FROM decision_seal_queue"


def link(prev_hash: bytes, record: bytes) -> bytes:
    """The seal of a record (its JSON text's UTF-8 bytes) that follows ``prev_hash``."""
    return hashlib.sha256(prev_hash + record).digest()


async def _off_loop(work: Callable[..., T], *args: object) -> T:
    """``work(*args)`` on the hashing thread; the loop serves others meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(_HASHING, work, *args)


class _Seals:
    """The seals that extend the chain over a batch taken from the queue, as
    :data:`_SEAL` takes them."""

    def __init__(self, rows: Sequence[asyncpg.Record], prev: bytes) -> None:
        self.taken = ",".join(str(row["seq"]) for row in rows)
        queued: list[str] = []
        chain = [prev]
        for row in rows:
            if row["record"] is None:
                continue
            prev = link(prev, row["record"])
            queued.append(str(row["seq"]))
            chain.append(prev)
        self.queued = ",".join(queued)
        self.chain = b"".join(chain)


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
            seals = await _off_loop(_Seals, rows, prev)
            await conn.execute(_SEAL, seals.taken, seals.queued, seq, seals.chain)
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


async def verify(
    pool: asyncpg.Pool, since: datetime | None = None, *, batch: int = WALK_BATCH
) -> VerifyReport:
    """Walk the chain (from the last seal before ``since``, if given) and check it.

    Args:
        pool: The audit database's pool; each batch takes a connection for one query.
        since: Check only seals of records committed from then on.
        batch: Seals read and checked per query.

    Returns:
        Whether the chain holds, how many seals were checked, and the first record
        where it breaks.
    """
    seq, prev = 0, GENESIS
    if since is not None:
        start = await pool.fetchrow(_START, since)
        if start is not None:
            seq, prev = start["seq"], bytes(start["hash"])
    checked = 0
    while rows := await pool.fetch(_WALK, seq, batch):
        passed, prev, problem = await _off_loop(_walk, rows, prev)
        checked += passed
        if problem is not None:
            return VerifyReport(
                ok=False,
                checked=checked,
                unsealed=await pool.fetchval(_UNSEALED_COUNT),
                first_mismatch=str(rows[passed]["decision_id"]),
                reason=problem,
                chain_head=prev.hex(),
            )
        seq = rows[-1]["seq"]
    unsealed = await pool.fetchval(_UNSEALED_COUNT)
    return VerifyReport(ok=True, checked=checked, unsealed=unsealed, chain_head=prev.hex())


def _walk(rows: Sequence[asyncpg.Record], prev: bytes) -> tuple[int, bytes, str | None]:
    """Check a batch of seals that follows ``prev``: how many hold, the last good
    hash, and what is wrong with the next one, if anything."""
    for passed, row in enumerate(rows):
        problem = _check(row, prev)
        if problem is not None:
            return passed, prev, problem
        prev = bytes(row["hash"])
    return len(rows), prev, None


def _check(row: asyncpg.Record, prev: bytes) -> str | None:
    if bytes(row["prev_hash"]) != prev:
        return "seal does not link to the previous seal"
    if row["record"] is None:
        if row["retained_away"]:
            return None  # dropped by retention with its whole partition
        return "record is missing"
    if link(prev, row["record"]) != bytes(row["hash"]):
        return "record does not match its seal"
    return None
