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

Both run inside the gateway's process, beside ``/score``, so neither does long work on
its event loop. The sealer hashes its batch on a thread of its own. :func:`verify`
walks the chain in keyset batches that PostgreSQL checks where the records are (the
same SHA-256 over the same bytes), one query per batch on a pooled connection, so a
walk of millions of records holds no connection or transaction for long, keeps
nothing of the chain in memory but the hash it has reached, and leaves the loop
free.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TypeVar

import asyncpg

from contracts.audit import VerifyReport
from writeback.pool import reconnect_if_read_only

log = logging.getLogger(__name__)

T = TypeVar("T")

GENESIS = bytes(32)
WALK_BATCH = 5000
"""Seals :func:`verify` has the database check per query."""
# The sealer's hashing thread, one for the process. hashlib lets go of the interpreter
# lock while it hashes a record (over 2 kB), so the loop's thread gets it back within
# microseconds.
_HASHING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoregate-seals")

# Records travel as their UTF-8 bytes (what is hashed), and only the columns the sealer
# needs travel at all: decoding and encoding rows is the part of its work that stays
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
# verify checks a batch in the database, where the records are: PostgreSQL hashes each
# record with its seal's prev_hash (the same bytes the sealer hashed) and compares,
# checks that each seal links to the one before (the first to ``$3``, the hash the
# walk has reached), and sends back one row: the first that fails, or else the last.
# Only that row crosses the wire, so a walk of a million records costs the gateway's
# event loop a few hundred small answers instead of decoding gigabytes of records.
# The batch is limited before the join (over the whole table the planner expects half
# the chain and plans parallel workers for every batch). Whether a missing record
# went with a partition retention dropped is decided in the batch's own snapshot, so
# a drop while a long walk runs excuses its records rather than reporting them.
_WALK = """
WITH batch AS (
    SELECT seq, decision_id, committed_at, prev_hash, hash,
           coalesce(lag(hash) OVER w, $3::bytea) AS chain_prev,
           row_number() OVER w AS n,
           count(*) OVER () AS size
    FROM (
        SELECT seq, decision_id, committed_at, prev_hash, hash
        FROM decision_seals WHERE seq > $1 ORDER BY seq LIMIT $2
    ) AS s
    WINDOW w AS (ORDER BY seq)
), checked AS (
    SELECT b.seq, b.decision_id, b.hash, b.chain_prev, b.n, b.size,
           CASE
               WHEN b.prev_hash <> b.chain_prev THEN 'seal does not link to the previous seal'
               WHEN d.decision_id IS NULL THEN
                   CASE WHEN b.committed_at < (SELECT min(committed_at) FROM decisions)
                        THEN NULL ELSE 'record is missing' END
               WHEN pg_catalog.sha256(b.prev_hash || convert_to(d.record::text, 'UTF8'))
                    <> b.hash THEN 'record does not match its seal'
           END AS problem
    FROM batch AS b
    LEFT JOIN decisions AS d
           ON d.decision_id = b.decision_id AND d.committed_at = b.committed_at
)
SELECT seq, decision_id, hash, chain_prev, n, size, problem
FROM checked
WHERE problem IS NOT NULL OR n = size
ORDER BY n
LIMIT 1
"""
_START = """
SELECT seq, hash FROM decision_seals WHERE committed_at < $1 ORDER BY seq DESC LIMIT 1
"""
_UNSEALED_COUNT = "SELECT count(*) FROM decision_seal_queue"


def link(prev_hash: bytes, record: bytes) -> bytes:
    """The seal of a record that follows ``prev_hash``.

    Args:
        prev_hash: The previous seal's hash (:data:`GENESIS` for the first record).
        record: The record's JSON text as UTF-8 bytes, as committed.

    Returns:
        ``sha256(prev_hash || record)``.
    """
    return hashlib.sha256(prev_hash + record).digest()


async def _off_loop(work: Callable[..., T], *args: object) -> T:
    """``work(*args)`` on the hashing thread; the loop serves others meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(_HASHING, work, *args)


class _Seals:
    """The seals that extend the chain over a batch taken from the queue.

    They are kept in the form :data:`_SEAL` takes them.
    """

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
    """Extends the chain with every newly committed decision, in the background.

    Args:
        pool: The audit database's pool; a pass holds one connection.
        interval_s: Seconds to wait after a pass that found less than a full batch.
        batch: Records sealed per transaction at most.
    """

    def __init__(self, pool: asyncpg.Pool, interval_s: float = 1.0, batch: int = 1000) -> None:
        self._pool = pool
        self._interval_s = interval_s
        self._batch = batch
        self._task: asyncio.Task[None] | None = None

    async def seal_once(self) -> int:
        """Seal what is unsealed, up to a batch, in one transaction.

        Returns:
            How many queue entries were taken (sealed, or dropped because their
            record is gone); 0 when another sealer holds the chain.

        Raises:
            asyncpg.PostgresError: A statement failed; nothing of the batch is sealed.
            OSError: PostgreSQL could not be reached.
        """
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
                await reconnect_if_read_only(self._pool, exc)
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


async def _rest(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def verify(
    pool: asyncpg.Pool,
    since: datetime | None = None,
    *,
    batch: int = WALK_BATCH,
    pace: float = 0.0,
) -> VerifyReport:
    """Walk the chain (from the last seal before ``since``, if given) and check it.

    Args:
        pool: The audit database's pool; each batch takes a connection for one query.
        since: Check only seals of records committed from then on.
        batch: Seals read and checked per query.
        pace: After each batch, rest this many times as long as the batch took, so the
            walk keeps at most ``1 / (1 + pace)`` of a PostgreSQL backend busy (hashing
            a million records is CPU work the database shares with the commits of
            ``/score``). 0 walks at full speed.

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
    while True:
        started = time.perf_counter()
        row = await pool.fetchrow(_WALK, seq, batch, prev)
        if row is None:
            break
        if pace > 0:
            await _rest(pace * (time.perf_counter() - started))
        if row["problem"] is not None:
            return VerifyReport(
                ok=False,
                checked=checked + row["n"] - 1,
                unsealed=await pool.fetchval(_UNSEALED_COUNT),
                first_mismatch=str(row["decision_id"]),
                reason=row["problem"],
                chain_head=bytes(row["chain_prev"]).hex(),
            )
        checked += row["size"]
        seq, prev = row["seq"], bytes(row["hash"])
    unsealed = await pool.fetchval(_UNSEALED_COUNT)
    return VerifyReport(ok=True, checked=checked, unsealed=unsealed, chain_head=prev.hex())
