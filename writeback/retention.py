"""Retention and partition upkeep of the audit store.

``decisions`` and ``writeback_timeline`` are partitioned by month (UTC). Upkeep
creates the partitions of the coming months ahead of time, drops whole partitions
once every row in them is older than the retention period, removes the idempotency
and rollback rows of the dropped months, and purges delivered outbox rows (their
history stays in the timeline). One process at a time does it: a session advisory
lock makes the others skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

from writeback.config import WritebackConfig
from writeback.pool import reconnect_if_read_only

logger = logging.getLogger(__name__)

PARTITIONED_TABLES = ("decisions", "writeback_timeline")
"""The month-partitioned tables; each has a ``<table>_default`` partition."""

# Any constant works as long as every scoregate process uses the same one.
_UPKEEP_LOCK_KEY = 0x5C0E_6A7E_0002
# Dropping or attaching a partition briefly locks its table: give up rather than
# queue writers behind a long wait; the next run tries again.
_LOCK_TIMEOUT = "5s"
_PURGE_BATCH = 5000
_PARTITION_NAME = re.compile(r"_p(\d{4})(\d{2})$")

_ENSURE_PARTITION = "SELECT scoregate_ensure_month_partition($1, $2)"
_PARTITIONS = """
SELECT c.relname
FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::regclass
"""
_PURGE_DEFAULT = {
    "decisions": "DELETE FROM decisions_default WHERE committed_at < $1",
    "writeback_timeline": "DELETE FROM writeback_timeline_default WHERE at < $1",
}
_PURGE_REQUESTS = "DELETE FROM decision_requests WHERE committed_at < $1"
_PURGE_ROLLBACKS = "DELETE FROM rollbacks WHERE rolled_back_at < $1"
_PURGE_OUTBOX = """
DELETE FROM outbox WHERE seq IN (
    SELECT seq FROM outbox
    WHERE status = 'delivered' AND delivered_at < $1
    ORDER BY seq
    LIMIT $2
)
"""


@dataclass(slots=True)
class RetentionReport:
    """What one upkeep run did.

    Attributes:
        skipped: Another process was doing it; nothing was done.
        partitions_created: Partitions created, by name.
        partitions_dropped: Partitions dropped, by name.
        rows_purged: Rows deleted, by table.
    """

    skipped: bool = False
    partitions_created: list[str] = field(default_factory=list)
    partitions_dropped: list[str] = field(default_factory=list)
    rows_purged: dict[str, int] = field(default_factory=dict)


def month_start(moment: datetime | date) -> date:
    """The first day of the (UTC) month ``moment`` falls in."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC).date()
    return moment.replace(day=1)


def add_months(first_day: date, months: int) -> date:
    """The first day of the month ``months`` after ``first_day``'s."""
    index = first_day.year * 12 + first_day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _deleted(status: str) -> int:
    # asyncpg answers "DELETE <count>".
    return int(status.rpartition(" ")[2] or 0)


class Retention:
    """Keeps partitions ready and drops or purges what is past retention.

    Args:
        pool: The shared pool.
        config: Retention periods, months ahead and the interval of the background run.
    """

    def __init__(self, pool: asyncpg.Pool, config: WritebackConfig) -> None:
        self._pool = pool
        self._config = config
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run upkeep now and then every ``maintenance_interval_s`` (0: never)."""
        if self._task is not None or self._config.maintenance_interval_s <= 0:
            return
        self._task = asyncio.create_task(self._run_forever(), name="audit-retention")

    async def stop(self) -> None:
        """Stop the background run (a run in progress is cancelled; it is safe to)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_once(self, now: datetime | None = None) -> RetentionReport:
        """Create partitions ahead, drop and purge what is past retention.

        Args:
            now: The time to act as of (tests move it forward); default the clock.

        Returns:
            What was done.

        Raises:
            asyncpg.PostgresError: A statement failed (what ran before it stays done).
            OSError: PostgreSQL could not be reached.
        """
        now = now or datetime.now(UTC)
        report = RetentionReport()
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _UPKEEP_LOCK_KEY):
                report.skipped = True
                return report
            try:
                await conn.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT}'")
                await self._create_ahead(conn, now, report)
                await self._drop_expired(conn, now, report)
                await self._purge_outbox(conn, now, report)
            finally:
                await conn.execute("RESET lock_timeout")
                await conn.execute("SELECT pg_advisory_unlock($1)", _UPKEEP_LOCK_KEY)
        return report

    async def _create_ahead(
        self, conn: asyncpg.pool.PoolConnectionProxy, now: datetime, report: RetentionReport
    ) -> None:
        first = month_start(now)
        for ahead in range(self._config.partitions_ahead_months + 1):
            month = add_months(first, ahead)
            for table in PARTITIONED_TABLES:
                if await conn.fetchval(_ENSURE_PARTITION, table, month):
                    report.partitions_created.append(f"{table}_p{month:%Y%m}")

    async def _drop_expired(
        self, conn: asyncpg.pool.PoolConnectionProxy, now: datetime, report: RetentionReport
    ) -> None:
        cutoff = now - timedelta(days=self._config.decision_retention_days)
        # Whole months only: what is kept starts at the month the cutoff falls in.
        kept_from = datetime.combine(month_start(cutoff), datetime.min.time(), UTC)
        for table in PARTITIONED_TABLES:
            for row in await conn.fetch(_PARTITIONS, table):
                name = row["relname"]
                match = _PARTITION_NAME.search(name)
                if match is None or not name.startswith(f"{table}_p"):
                    continue
                first = date(int(match.group(1)), int(match.group(2)), 1)
                if add_months(first, 1) > kept_from.date():
                    continue
                # `name` comes from the catalog and matched the partition pattern.
                await conn.execute(f'DROP TABLE "{name}"')
                report.partitions_dropped.append(name)
                logger.info("dropped partition %s (older than %s)", name, kept_from.date())
            purged = _deleted(await conn.execute(_PURGE_DEFAULT[table], kept_from))
            report.rows_purged[f"{table}_default"] = purged
        report.rows_purged["decision_requests"] = _deleted(
            await conn.execute(_PURGE_REQUESTS, kept_from)
        )
        report.rows_purged["rollbacks"] = _deleted(await conn.execute(_PURGE_ROLLBACKS, kept_from))

    async def _purge_outbox(
        self, conn: asyncpg.pool.PoolConnectionProxy, now: datetime, report: RetentionReport
    ) -> None:
        cutoff = now - timedelta(hours=self._config.outbox_retention_hours)
        total = 0
        # Short transactions, so the relay and commits never wait long on a purge.
        while True:
            deleted = _deleted(await conn.execute(_PURGE_OUTBOX, cutoff, _PURGE_BATCH))
            total += deleted
            if deleted < _PURGE_BATCH:
                break
        report.rows_purged["outbox"] = total

    async def _run_forever(self) -> None:
        interval = self._config.maintenance_interval_s
        while True:
            try:
                report = await self.run_once()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("retention run failed (%r); trying again in %.0fs", exc, interval)
                await reconnect_if_read_only(self._pool, exc)
            else:
                if report.partitions_created or report.partitions_dropped:
                    logger.info(
                        "retention: created %s, dropped %s, purged %s",
                        report.partitions_created,
                        report.partitions_dropped,
                        report.rows_purged,
                    )
            await asyncio.sleep(interval)
