"""Served staleness rolled up from the decision records, and the windows read from it.

Every decision record holds, per feature, how it was served and how stale it was. A
trigger queues each inserted decision; :class:`FreshnessRollup` (one at a time across
processes, an advisory lock) takes a batch off the queue and adds each stored feature's
serve to the slot its decision was made in, in one statement that PostgreSQL runs where
the records are: nothing of a record crosses the wire. Slots are of two grains, the
deployment's fine one (``freshness_resolution_s``, 10 s by default) and the hour, and
the staleness is counted in the log-scaled buckets of :mod:`gateway.freshness.histogram`
at the minute and the hour.

Reports and burn-rate windows read these rows, never the records: a window's figures
cost a few rows per feature and slot, however many decisions were made in it. Windows
up to :data:`FINE_HORIZON_S` are exact to one fine slot at their start: they are read
from the fine slots up to their first whole hour and from the hourly slots after it,
so a day costs about an hour of fine slots. Longer ones are read from the hourly slots
(exact to the hour).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

import asyncpg
import msgspec

from writeback.pool import reconnect_if_read_only

log = logging.getLogger(__name__)

HOUR_S = 3600
STALENESS_FINE_S = 60
"""The fine grain of staleness buckets (or the serves' fine grain, if coarser)."""
FINE_HORIZON_S = 26 * HOUR_S
"""Fine slots are kept (and windows read from them) for this long."""
HOURLY_HORIZON_S = 35 * 24 * HOUR_S
"""Hourly slots are kept this long: a 30-day objective's period and some."""

_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('scoregate_freshness_rollup'))"
# The planner cannot know that a record holds a dozen features (it assumes a hundred
# per json_each), so it would JIT-compile the batch's statement: some 700 ms of
# compiling for 40 ms of work, on every pass.
_NO_JIT = "SET LOCAL jit = off"
# One statement: take a batch off the queue, read the stored features' serves out of
# the records (request-time context is not counted; a decision gone before its turn
# counts nothing), and add them up per feature and slot at both grains. Within the
# SLA means a staleness at most the SLA recorded with the serve.
_ROLL = """
WITH taken AS (
    DELETE FROM freshness_queue
    WHERE seq IN (SELECT seq FROM freshness_queue ORDER BY seq LIMIT $1)
    RETURNING decision_id, committed_at
), served AS (
    SELECT f.key AS feature,
           extract(epoch FROM d.decided_at) AS at_s,
           f.value->>'status' AS status,
           (f.value->>'staleness_ms')::bigint AS staleness_ms,
           coalesce((f.value->>'staleness_ms')::bigint <= (f.value->>'max_staleness_ms')::bigint,
                    false) AS within
    FROM taken AS t
    JOIN decisions AS d ON d.decision_id = t.decision_id AND d.committed_at = t.committed_at
    CROSS JOIN LATERAL json_each(d.record->'features') AS f
    WHERE f.value->>'status' IS DISTINCT FROM 'request'
), grains AS (
    SELECT DISTINCT grain_s, buckets_s FROM (VALUES
        ($2::integer, greatest($2::integer, $3::integer)), ($4::integer, $4::integer)
    ) AS g (grain_s, buckets_s)
), serves AS (
    INSERT INTO freshness_serves AS s
        (feature, grain_s, slot_start, served, within_sla, fresh, fallback, stale,
         defaulted, missing)
    SELECT v.feature, g.grain_s, to_timestamp(floor(v.at_s / g.grain_s) * g.grain_s),
           count(*), count(*) FILTER (WHERE v.within),
           count(*) FILTER (WHERE v.status = 'fresh'),
           count(*) FILTER (WHERE v.status = 'fallback'),
           count(*) FILTER (WHERE v.status = 'stale'),
           count(*) FILTER (WHERE v.status = 'default'),
           count(*) FILTER (WHERE v.status = 'missing')
    FROM served AS v CROSS JOIN grains AS g
    GROUP BY 1, 2, 3
    ON CONFLICT (feature, grain_s, slot_start) DO UPDATE SET
        served = s.served + excluded.served,
        within_sla = s.within_sla + excluded.within_sla,
        fresh = s.fresh + excluded.fresh,
        fallback = s.fallback + excluded.fallback,
        stale = s.stale + excluded.stale,
        defaulted = s.defaulted + excluded.defaulted,
        missing = s.missing + excluded.missing
    RETURNING 1
), staleness AS (
    INSERT INTO freshness_staleness AS h (feature, grain_s, slot_start, bucket, n)
    SELECT v.feature, g.buckets_s, to_timestamp(floor(v.at_s / g.buckets_s) * g.buckets_s),
           floor(ln(1 + greatest(v.staleness_ms, 0)) * 20)::smallint, count(*)
    FROM served AS v CROSS JOIN grains AS g
    WHERE v.staleness_ms IS NOT NULL
    GROUP BY 1, 2, 3, 4
    ON CONFLICT (feature, grain_s, slot_start, bucket) DO UPDATE SET n = h.n + excluded.n
    RETURNING 1
)
SELECT (SELECT count(*) FROM taken) AS taken,
       (SELECT count(*) FROM serves) + (SELECT count(*) FROM staleness) AS rows
"""
_PRUNE_SERVES = """
DELETE FROM freshness_serves
WHERE (grain_s <> $1 AND slot_start < now() - make_interval(secs => $2))
   OR (grain_s = $1 AND slot_start < now() - make_interval(secs => $3))
"""
_PRUNE_STALENESS = """
DELETE FROM freshness_staleness
WHERE (grain_s <> $1 AND slot_start < now() - make_interval(secs => $2))
   OR (grain_s = $1 AND slot_start < now() - make_interval(secs => $3))
"""
_BACKLOG = "SELECT count(*) FROM freshness_queue"
# Windows end at $1 (now) and start $2[i] seconds before it; a slot counts when it
# starts within the window. A window that fits the fine slots' horizon is read from
# them up to the first whole hour in it and from the hourly slots after, which hold
# the same counts in a 360th of the rows at 10 s: a day reads at most an hour of fine
# slots and 25 hourly ones per feature. Longer windows are read from the hourly slots.
# Hours are counted from the epoch, as the rollup counts them, not in the session's
# time zone. Each window's slots are read in a lateral subquery, so the plan is a range
# scan per window and grain whatever the bounds: a generic plan (PostgreSQL's choice
# after five executions of a prepared statement) scanned every fine slot otherwise.


def _windowed(table: str, sums: str, keys: str) -> str:
    """The statement that sums ``table``'s slots per window (see above) by ``keys``."""
    return f"""
WITH bounds AS (
    SELECT window_s, since,
           CASE WHEN window_s <= $4
                THEN to_timestamp((floor(extract(epoch FROM since) / 3600) + 1)::float8 * 3600)
                ELSE '-infinity'::timestamptz END AS hours_from
    FROM (
        SELECT window_s, $1::timestamptz - make_interval(secs => window_s) AS since
        FROM unnest($2::integer[]) AS u (window_s)
    ) AS w
)
SELECT b.window_s, {keys}, {sums}
FROM bounds AS b
CROSS JOIN LATERAL (
    SELECT * FROM {table} AS f
    WHERE f.grain_s = $3::integer AND f.slot_start > b.since AND f.slot_start < b.hours_from
      AND f.slot_start <= $1::timestamptz
    UNION ALL
    SELECT * FROM {table} AS h
    WHERE h.grain_s = 3600 AND h.slot_start > b.since AND h.slot_start >= b.hours_from
      AND h.slot_start <= $1::timestamptz
) AS s
WHERE $5::text[] IS NULL OR s.feature = ANY($5::text[])
GROUP BY b.window_s, {keys}
"""  # noqa: S608 - constant table and column names


_SERVE_WINDOWS = _windowed(
    "freshness_serves",
    ", ".join(
        f"sum(s.{column})::bigint AS {column}"
        for column in ("served", "within_sla", "fresh", "fallback", "stale", "defaulted", "missing")
    ),
    "s.feature",
)
_STALENESS_WINDOWS = _windowed(
    "freshness_staleness", "sum(s.n)::bigint AS n", "s.feature, s.bucket"
)


class ServeCounts(msgspec.Struct, frozen=True, kw_only=True):
    """A feature's serves in a window, and how they were served.

    Attributes:
        served: Serves of the stored feature (request-time context is not counted).
        within_sla: Those whose staleness was at most the feature's SLA.
        fresh: Served from the online store within its bound.
        fallback: Fetched from the source because stored was missing or too stale.
        stale: Served beyond the SLA because the source failed and the policy allows.
        defaulted: The declared default.
        missing: No value (records of assemblies that failed).
    """

    served: int = 0
    within_sla: int = 0
    fresh: int = 0
    fallback: int = 0
    stale: int = 0
    defaulted: int = 0
    missing: int = 0


class FreshnessRollup:
    """Adds the serves of newly committed decisions to the rollup, in the background.

    Args:
        pool: The audit database's pool; a pass holds one connection.
        resolution_s: The fine grain (``freshness_resolution_s``).
        interval_s: Seconds to wait after a pass that found less than a full batch.
        batch: Decisions rolled up per transaction at most.
        prune_every: Passes between two prunings of slots past their horizon.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        resolution_s: int,
        *,
        interval_s: float = 1.0,
        batch: int = 2000,
        prune_every: int = 600,
    ) -> None:
        self._pool = pool
        self.resolution_s = resolution_s
        self._interval_s = interval_s
        self._batch = batch
        self._prune_every = prune_every
        self._passes = 0
        self._task: asyncio.Task[None] | None = None

    async def roll_once(self) -> int:
        """Roll up what is queued, up to a batch, in one transaction.

        Returns:
            How many decisions were taken off the queue; 0 when another process holds
            the rollup or nothing is queued.

        Raises:
            asyncpg.PostgresError: A statement failed; nothing of the batch counts.
            OSError: PostgreSQL could not be reached.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(_LOCK):
                return 0
            await conn.execute(_NO_JIT)
            row = await conn.fetchrow(
                _ROLL, self._batch, self.resolution_s, STALENESS_FINE_S, HOUR_S
            )
            return int(row["taken"]) if row else 0

    async def drain(self) -> int:
        """Roll up until the queue is empty (or another process holds the rollup)."""
        total = 0
        while (taken := await self.roll_once()) > 0:
            total += taken
        return total

    async def prune(self) -> None:
        """Drop fine slots past :data:`FINE_HORIZON_S` and hourly ones past theirs."""
        async with self._pool.acquire() as conn:
            for statement in (_PRUNE_SERVES, _PRUNE_STALENESS):
                await conn.execute(statement, HOUR_S, FINE_HORIZON_S, HOURLY_HORIZON_S)

    async def backlog(self) -> int:
        """Decisions committed and not yet rolled up."""
        return int(await self._pool.fetchval(_BACKLOG))

    async def _run(self) -> None:
        while True:
            try:
                while await self.roll_once() >= self._batch:
                    pass
                self._passes += 1
                if self._passes % self._prune_every == 1:
                    await self.prune()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("rolling up served staleness failed, retrying: %s", exc)
                await reconnect_if_read_only(self._pool, exc)
            await asyncio.sleep(self._interval_s)

    async def start(self) -> None:
        """Roll up in the background until stopped."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="freshness-rollup")

    async def stop(self) -> None:
        """Stop rolling up."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def serve_windows(
    pool: asyncpg.Pool | asyncpg.pool.PoolConnectionProxy,
    resolution_s: int,
    windows_s: Sequence[int],
    now: datetime,
    features: Iterable[str] | None = None,
) -> dict[int, dict[str, ServeCounts]]:
    """Serves per window (seconds back from ``now``) and feature, in one query.

    Args:
        pool: The audit database's pool, or a connection (to read in its transaction).
        resolution_s: The rollup's fine grain.
        windows_s: The windows' lengths in seconds.
        now: Where the windows end.
        features: Only these features (all when None).

    Returns:
        ``{window_s: {feature: counts}}``; a feature with no serves in a window is
        absent from it.
    """
    names = None if features is None else list(features)
    rows = await pool.fetch(
        _SERVE_WINDOWS, now, list(windows_s), resolution_s, FINE_HORIZON_S, names
    )
    windows: dict[int, dict[str, ServeCounts]] = {w: {} for w in windows_s}
    for row in rows:
        windows[row["window_s"]][row["feature"]] = ServeCounts(
            served=row["served"],
            within_sla=row["within_sla"],
            fresh=row["fresh"],
            fallback=row["fallback"],
            stale=row["stale"],
            defaulted=row["defaulted"],
            missing=row["missing"],
        )
    return windows


async def staleness_windows(
    pool: asyncpg.Pool,
    resolution_s: int,
    windows_s: Sequence[int],
    now: datetime,
    features: Iterable[str] | None = None,
) -> dict[int, dict[str, dict[int, int]]]:
    """Served staleness per window and feature as counts per histogram bucket.

    Windows up to :data:`FINE_HORIZON_S` are read at the minute (or the fine grain, if
    coarser), longer ones at the hour. Feed the counts to
    :func:`gateway.freshness.histogram.quantiles` for percentiles.

    Returns:
        ``{window_s: {feature: {bucket: count}}}``.
    """
    names = None if features is None else list(features)
    grain = max(resolution_s, STALENESS_FINE_S)
    rows = await pool.fetch(_STALENESS_WINDOWS, now, list(windows_s), grain, FINE_HORIZON_S, names)
    windows: dict[int, dict[str, dict[int, int]]] = {w: {} for w in windows_s}
    for row in rows:
        windows[row["window_s"]].setdefault(row["feature"], {})[row["bucket"]] = row["n"]
    return windows
