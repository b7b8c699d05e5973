"""The state of the freshness burn-rate alerts, and their events through the outbox.

An evaluation is one transaction holding an advisory lock, so one evaluator at a time
across every gateway process reads the windows, compares them with the stored states
and writes the changes; the others find the lock taken and skip their turn. A change
of state, its line in the change log and its CloudEvent's outbox row commit together:
an alert is raised once however many processes evaluate, and it reaches the alerts
topic through the relay, as decisions do.

An alert's outbox row has ``subject`` = the feature (the relay's ``ce_subject``), the
feature as its record key (so one feature's events keep their order) and its own
event id as ``decision_id`` (see migration 009).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import asyncpg
import msgspec

from contracts.events import FRESHNESS_BREACHED, FRESHNESS_RECOVERED, FreshnessAlertEvent
from contracts.freshness_alerts import AlertChange, AlertStatus, FreshnessAlerts
from writeback.config import WritebackConfig
from writeback.errors import unavailable_on_error
from writeback.freshness import ServeCounts, serve_windows

CHANGES_HORIZON = timedelta(days=35)
"""Changes are kept this long for the page (their events stay in Kafka and the timeline)."""

_encoder = msgspec.json.Encoder()

_LOCK = """
SELECT pg_try_advisory_xact_lock(hashtext('scoregate_freshness_alerts')) AS locked,
       now() AS now
"""
_STATES = "SELECT feature, alert, firing, since FROM freshness_alerts"
_STORE_STATES = """
INSERT INTO freshness_alerts AS a (
    feature, alert, firing, since, changed_at, evaluated_at, owner, long_window_s,
    short_window_s, burn_rate_threshold, long_burn_rate, short_burn_rate, last_event_id
)
SELECT u.feature, u.alert, u.firing, u.since,
       CASE WHEN u.event_id IS NOT NULL THEN $12::timestamptz END, $12::timestamptz,
       u.owner, u.long_window_s, u.short_window_s, u.threshold, u.long_rate, u.short_rate,
       u.event_id
FROM unnest(
    $1::text[], $2::text[], $3::boolean[], $4::timestamptz[], $5::text[], $6::integer[],
    $7::integer[], $8::float8[], $9::float8[], $10::float8[], $11::uuid[]
) AS u(feature, alert, firing, since, owner, long_window_s, short_window_s, threshold,
       long_rate, short_rate, event_id)
ON CONFLICT (feature, alert) DO UPDATE SET
    firing = excluded.firing,
    since = excluded.since,
    changed_at = coalesce(excluded.changed_at, a.changed_at),
    evaluated_at = excluded.evaluated_at,
    owner = excluded.owner,
    long_window_s = excluded.long_window_s,
    short_window_s = excluded.short_window_s,
    burn_rate_threshold = excluded.burn_rate_threshold,
    long_burn_rate = excluded.long_burn_rate,
    short_burn_rate = excluded.short_burn_rate,
    last_event_id = coalesce(excluded.last_event_id, a.last_event_id)
"""
# Each change: its outbox row (in order, keyed by feature), its 'committed' line in the
# write-back timeline and its line in the change log.
_QUEUE_CHANGES = """
WITH e AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::boolean[],
        $7::float8[], $8::float8[]
    ) WITH ORDINALITY AS e(event_id, event_type, feature, alert, payload, firing, long_rate,
                           short_rate, ord)
),
queued AS (
    INSERT INTO outbox (
        event_id, decision_id, event_type, topic, message_key, payload, event_time, subject
    )
    SELECT event_id, event_id, event_type, $9, feature, payload, $10, feature
    FROM e ORDER BY ord
    RETURNING event_id, decision_id, event_type, topic, created_at
),
logged AS (
    INSERT INTO writeback_timeline (event_id, decision_id, event_type, stage, at, topic)
    SELECT event_id, decision_id, event_type, 'committed', created_at, topic FROM queued
)
INSERT INTO freshness_alert_changes (
    feature, alert, firing, at, event_id, event_type, long_burn_rate, short_burn_rate
)
SELECT feature, alert, firing, $10, event_id, event_type, long_rate, short_rate
FROM e ORDER BY ord
"""
_NOTIFY = "SELECT pg_notify('scoregate_outbox', '')"
_PRUNE_CHANGES = "DELETE FROM freshness_alert_changes WHERE at < $1"
_READ_STATES = """
SELECT feature, alert, owner, firing, since, evaluated_at, long_window_s, short_window_s,
       burn_rate_threshold, long_burn_rate, short_burn_rate, last_event_id
FROM freshness_alerts
WHERE $1::text[] IS NULL OR feature = ANY($1::text[])
ORDER BY firing DESC, feature, alert
"""
_READ_CHANGES = """
SELECT feature, alert, firing, at, event_id, event_type, long_burn_rate, short_burn_rate
FROM freshness_alert_changes
WHERE $1::text[] IS NULL OR feature = ANY($1::text[])
ORDER BY seq DESC
LIMIT $2
"""


def _text(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


class StoredAlert(msgspec.Struct, frozen=True, kw_only=True):
    """An alert's state as the last evaluation left it.

    Attributes:
        firing: Whether it is firing.
        since: When it entered that state (None while it never fired).
    """

    firing: bool = False
    since: datetime | None = None


class AlertUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """One alert's evaluation to store: its state, its rates and, on a change, its event.

    Attributes:
        feature: The feature.
        alert: The alert's name.
        owner: The feature's owner.
        firing: Its state after this evaluation.
        since: When it entered that state.
        long_window_s: The long window's length.
        short_window_s: The short window's length.
        burn_rate_threshold: The rate both windows reach for it to fire.
        long_burn_rate: The long window's rate (None without serves).
        short_burn_rate: The short window's rate (None without serves).
        event: The CloudEvent's data when the state changed; None when it did not.
    """

    feature: str
    alert: str
    owner: str
    firing: bool
    since: datetime | None
    long_window_s: int
    short_window_s: int
    burn_rate_threshold: float
    long_burn_rate: float | None
    short_burn_rate: float | None
    event: FreshnessAlertEvent | None = None


class AlertEvaluation:
    """One evaluation's transaction, holding the alerts' lock (see :class:`FreshnessAlertStore`).

    Attributes:
        now: The transaction's time on PostgreSQL's clock: where the windows end and
            when changes happen.
    """

    def __init__(
        self, conn: asyncpg.pool.PoolConnectionProxy, config: WritebackConfig, now: datetime
    ) -> None:
        self._conn = conn
        self._config = config
        self.now = now

    async def serve_windows(
        self, windows_s: Sequence[int], features: Iterable[str]
    ) -> dict[int, dict[str, ServeCounts]]:
        """Serves per window (ending at :attr:`now`) and feature, in one query."""
        return await serve_windows(
            self._conn, self._config.freshness_resolution_s, windows_s, self.now, features
        )

    async def states(self) -> dict[tuple[str, str], StoredAlert]:
        """Every stored state, by (feature, alert)."""
        rows = await self._conn.fetch(_STATES)
        return {
            (row["feature"], row["alert"]): StoredAlert(firing=row["firing"], since=row["since"])
            for row in rows
        }

    async def apply(self, updates: Sequence[AlertUpdate]) -> list[uuid.UUID]:
        """Store every update, and queue the event of each one that carries one.

        Args:
            updates: One per evaluated alert.

        Returns:
            The CloudEvents ids of the queued events, in the order of their updates.
        """
        changed = [update for update in updates if update.event is not None]
        event_ids = [uuid.uuid4() for _ in changed]
        ids = dict(zip((id(update) for update in changed), event_ids, strict=True))
        await self._conn.execute(
            _STORE_STATES,
            [u.feature for u in updates],
            [u.alert for u in updates],
            [u.firing for u in updates],
            [u.since for u in updates],
            [u.owner for u in updates],
            [u.long_window_s for u in updates],
            [u.short_window_s for u in updates],
            [u.burn_rate_threshold for u in updates],
            [u.long_burn_rate for u in updates],
            [u.short_burn_rate for u in updates],
            [ids.get(id(u)) for u in updates],
            self.now,
        )
        if changed:
            await self._conn.execute(
                _QUEUE_CHANGES,
                event_ids,
                [FRESHNESS_BREACHED if u.firing else FRESHNESS_RECOVERED for u in changed],
                [u.feature for u in changed],
                [u.alert for u in changed],
                [_encoder.encode(u.event) for u in changed],
                [u.firing for u in changed],
                [u.long_burn_rate for u in changed],
                [u.short_burn_rate for u in changed],
                self._config.alerts_topic,
                self.now,
            )
            await self._conn.execute(_NOTIFY)
        await self._conn.execute(_PRUNE_CHANGES, self.now - CHANGES_HORIZON)
        return event_ids


class FreshnessAlertStore:
    """The alerts' states, their change log and their events, in PostgreSQL.

    Args:
        pool: The audit database's pool.
        config: The alerts topic and the rollup's resolution.
    """

    def __init__(self, pool: asyncpg.Pool, config: WritebackConfig) -> None:
        self._pool = pool
        self._config = config

    @asynccontextmanager
    async def evaluation(self) -> AsyncIterator[AlertEvaluation | None]:
        """One evaluation's transaction; None when another process is evaluating.

        What the block stores commits when it ends, and nothing of it when it raises.

        Raises:
            AuditUnavailable: PostgreSQL could not be reached or used (also when a
                statement of the block failed); nothing of the block was stored.
        """
        with unavailable_on_error("evaluate the freshness alerts"):
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(_LOCK)
                if row is None or not row["locked"]:
                    yield None
                    return
                yield AlertEvaluation(conn, self._config, row["now"])

    async def read(
        self, features: Iterable[str] | None = None, changes: int = 50
    ) -> FreshnessAlerts:
        """Every stored state (firing ones first) and the latest changes.

        Args:
            features: Only these features (all when None).
            changes: How many of the latest changes at most.

        Raises:
            AuditUnavailable: PostgreSQL could not be reached or used.
        """
        names = None if features is None else list(features)
        with unavailable_on_error("read the freshness alerts"):
            async with self._pool.acquire() as conn:
                states = await conn.fetch(_READ_STATES, names)
                log = await conn.fetch(_READ_CHANGES, names, changes)
        return FreshnessAlerts(
            alerts=[
                AlertStatus(
                    feature=row["feature"],
                    alert=row["alert"],
                    owner=row["owner"],
                    firing=row["firing"],
                    since=row["since"],
                    evaluated_at=row["evaluated_at"],
                    long_window_s=row["long_window_s"],
                    short_window_s=row["short_window_s"],
                    burn_rate_threshold=row["burn_rate_threshold"],
                    long_burn_rate=row["long_burn_rate"],
                    short_burn_rate=row["short_burn_rate"],
                    last_event_id=_text(row["last_event_id"]),
                )
                for row in states
            ],
            changes=[
                AlertChange(
                    feature=row["feature"],
                    alert=row["alert"],
                    firing=row["firing"],
                    at=row["at"],
                    event_id=str(row["event_id"]),
                    event_type=row["event_type"],
                    long_burn_rate=row["long_burn_rate"],
                    short_burn_rate=row["short_burn_rate"],
                )
                for row in log
            ],
        )
