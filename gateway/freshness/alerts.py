"""Burn-rate alerts on the freshness objectives, evaluated once across every gateway.

A feature's objective (its own, or the registry's default) says what share of its
serves must be within its SLA over a period; the rest is the error budget. A window's
burn rate is how fast the budget goes: ``(1 - within_sla / served) / (1 - target)``, so
1 spends it exactly over the period. Each of the registry's alerts (the SRE workbook's
multi-window, multi-burn-rate alerts: 1 h and 5 min at 14.4, 6 h and 30 min at 6) is
judged per feature:

- it fires when both windows' burn rates are at least its ``burn_rate``;
- it clears when either is below it;
- a window without serves has no rate: that is no data, and the alert keeps its state.
  This holds for the short window too: a quiet alert cannot fire on the long window
  alone, and a firing one stays firing until serves in the short window show the
  budget burning slower. No serves shows nothing fresh; recovering on silence would
  announce a recovery while ingest may still be down, and sparse traffic would flap.

:class:`FreshnessAlertEvaluator` runs in every gateway process: each interval it rolls
up what is queued, then in one transaction holding an advisory lock (one evaluator at
a time across processes) reads every alert's windows in one query, compares them with
the stored states and stores each change with its CloudEvent
(``scoregate.freshness.breached`` or ``.recovered``, subject = the feature) in the
outbox, which the relay publishes to the alerts topic. Each change is logged once, by
the process that made it: a WARNING for a breach, INFO for a recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from prometheus_client import Gauge

from contracts.events import AlertWindow, FreshnessAlertEvent, FreshnessBreached, FreshnessRecovered
from contracts.registry import BurnRateAlert, Feature, FreshnessObjective
from gateway.registry import Registry
from writeback import (
    AlertUpdate,
    AuditUnavailable,
    FreshnessAlertStore,
    FreshnessRollup,
    ServeCounts,
    StoredAlert,
    reconnect_if_read_only,
)

log = logging.getLogger(__name__)

ALERT_FIRING = Gauge(
    "scoregate_freshness_alert_firing",
    "1 while a feature's freshness burn-rate alert is firing, 0 when not (every gateway"
    " process reports the shared state).",
    ["feature", "alert"],
)
BURN_RATE = Gauge(
    "scoregate_freshness_burn_rate",
    "Burn rate of a feature's freshness error budget over an alert's long or short window"
    " at its last evaluation; NaN without serves in the window.",
    ["feature", "alert", "window"],
)

_ROUNDING = 1e-9
_DB_ERRORS = (AuditUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def burn_rate(counts: ServeCounts | None, target: float) -> float | None:
    """The burn rate of a window's serves against an objective's target.

    Args:
        counts: The window's serves (None when it had none).
        target: The objective's share of serves within the SLA (below 1).

    Returns:
        ``(1 - within_sla / served) / (1 - target)``; None without serves.
    """
    if counts is None or counts.served <= 0:
        return None
    bad = 1.0 - min(counts.within_sla, counts.served) / counts.served
    return bad / (1.0 - target)


@dataclass(frozen=True, slots=True)
class Verdict:
    """An alert's state after one evaluation.

    Attributes:
        firing: Whether it fires now.
        changed: Whether that differs from its state before.
        long_rate: The long window's burn rate (None without serves).
        short_rate: The short window's burn rate (None without serves).
    """

    firing: bool
    changed: bool
    long_rate: float | None
    short_rate: float | None


def judge(
    alert: BurnRateAlert,
    target: float,
    long: ServeCounts | None,
    short: ServeCounts | None,
    firing: bool,
) -> Verdict:
    """Judge one alert of one feature from its windows' serves and its state before.

    Args:
        alert: The alert: its windows and threshold.
        target: The feature's objective target.
        long: Serves in the long window (None when none).
        short: Serves in the short window (None when none).
        firing: Whether it was firing before.

    Returns:
        Firing when both rates reach ``alert.burn_rate``, not firing when either is
        below it, and the state before when either window has no serves.
    """
    long_rate = burn_rate(long, target)
    short_rate = burn_rate(short, target)
    if long_rate is None or short_rate is None:
        now_firing = firing
    else:
        # A rate reaching the threshold in exact arithmetic may fall a rounding short.
        reached = alert.burn_rate * (1 - _ROUNDING)
        now_firing = long_rate >= reached and short_rate >= reached
    return Verdict(
        firing=now_firing, changed=now_firing != firing, long_rate=long_rate, short_rate=short_rate
    )


def alert_windows(
    alert: BurnRateAlert, long: ServeCounts | None, short: ServeCounts | None, verdict: Verdict
) -> list[AlertWindow]:
    """The two windows as an alert event names them."""
    return [
        AlertWindow(
            window="long",
            seconds=alert.long_window_s,
            served=0 if long is None else long.served,
            within_sla=0 if long is None else long.within_sla,
            burn_rate=verdict.long_rate,
        ),
        AlertWindow(
            window="short",
            seconds=alert.short_window_s,
            served=0 if short is None else short.served,
            within_sla=0 if short is None else short.within_sla,
            burn_rate=verdict.short_rate,
        ),
    ]


class FreshnessAlertEvaluator:
    """Evaluates every feature's burn-rate alerts each interval, in the background.

    Args:
        registry: The features, their objectives and the alerts.
        store: Where the states live and changes are queued.
        rollup: Rolled up before each evaluation, so the windows hold what was
            committed up to then (None: the rollup is left to its own schedule).
        interval_s: Seconds between two evaluations (``SCOREGATE_ALERT_INTERVAL_S``).
        pool: The pool to reset when PostgreSQL turned read-only.
    """

    def __init__(
        self,
        registry: Registry,
        store: FreshnessAlertStore,
        rollup: FreshnessRollup | None,
        interval_s: float,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        self._registry = registry
        self._store = store
        self._rollup = rollup
        self._interval_s = interval_s
        self._pool = pool
        self._task: asyncio.Task[None] | None = None
        self.alerts = list(registry.file.freshness.alerts)
        self._windows = sorted(
            {a.long_window_s for a in self.alerts} | {a.short_window_s for a in self.alerts}
        )

    def objective(self, feature: Feature) -> FreshnessObjective:
        """A feature's objective: its own, or the registry's default."""
        return feature.objective or self._registry.file.freshness.objective

    async def evaluate_once(self) -> list[FreshnessAlertEvent] | None:
        """Roll up, then evaluate every alert and store the changes with their events.

        Returns:
            The events of the changes this call made (queued in the outbox, committed);
            None when another process was evaluating (the gauges then show the states
            it stored).

        Raises:
            AuditUnavailable: PostgreSQL could not be reached or used; nothing of this
                evaluation was stored.
        """
        if not self.alerts or not self._registry.features:
            return []
        if self._rollup is not None:
            await self._rollup.drain()
        features = list(self._registry.features.values())
        async with self._store.evaluation() as evaluation:
            if evaluation is None:
                decided = None
            else:
                windows = await evaluation.serve_windows(self._windows, [f.name for f in features])
                states = await evaluation.states()
                updates = self._updates(features, windows, states, evaluation.now)
                event_ids = await evaluation.apply(updates)
                decided = (updates, event_ids)
        if decided is None:
            await self._show_stored()
            return None
        updates, event_ids = decided
        changed = [update for update in updates if update.event is not None]
        for update, event_id in zip(changed, event_ids, strict=True):
            _log_change(update, str(event_id))
        _show(updates)
        return [update.event for update in changed if update.event is not None]

    def _updates(
        self,
        features: Sequence[Feature],
        windows: dict[int, dict[str, ServeCounts]],
        states: dict[tuple[str, str], StoredAlert],
        now: datetime,
    ) -> list[AlertUpdate]:
        updates: list[AlertUpdate] = []
        for feature in features:
            objective = self.objective(feature)
            for alert in self.alerts:
                before = states.get((feature.name, alert.name), StoredAlert())
                long = windows.get(alert.long_window_s, {}).get(feature.name)
                short = windows.get(alert.short_window_s, {}).get(feature.name)
                verdict = judge(alert, objective.target, long, short, before.firing)
                since = now if verdict.changed else before.since
                event = None
                if verdict.changed:
                    event = _event(feature, alert, objective, long, short, verdict, now, before)
                updates.append(
                    AlertUpdate(
                        feature=feature.name,
                        alert=alert.name,
                        owner=feature.owner,
                        firing=verdict.firing,
                        since=since,
                        long_window_s=alert.long_window_s,
                        short_window_s=alert.short_window_s,
                        burn_rate_threshold=alert.burn_rate,
                        long_burn_rate=verdict.long_rate,
                        short_burn_rate=verdict.short_rate,
                        event=event,
                    )
                )
        return updates

    async def _show_stored(self) -> None:
        stored = await self._store.read(self._registry.features, changes=0)
        for status in stored.alerts:
            _gauges(
                status.feature,
                status.alert,
                status.firing,
                status.long_burn_rate,
                status.short_burn_rate,
            )

    async def _run(self) -> None:
        while True:
            try:
                await self.evaluate_once()
            except _DB_ERRORS as exc:
                log.warning("evaluating the freshness alerts failed, retrying: %r", exc)
                if self._pool is not None:
                    await reconnect_if_read_only(self._pool, exc.__cause__ or exc)
            await asyncio.sleep(self._interval_s)

    async def start(self) -> None:
        """Evaluate in the background until stopped."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="freshness-alerts")

    async def stop(self) -> None:
        """Stop evaluating (an evaluation in progress is rolled back)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _event(
    feature: Feature,
    alert: BurnRateAlert,
    objective: FreshnessObjective,
    long: ServeCounts | None,
    short: ServeCounts | None,
    verdict: Verdict,
    now: datetime,
    before: StoredAlert,
) -> FreshnessAlertEvent:
    windows = alert_windows(alert, long, short, verdict)
    if verdict.firing:
        return FreshnessBreached(
            feature=feature.name,
            alert=alert.name,
            owner=feature.owner,
            sla_ms=feature.max_staleness_ms,
            objective=objective,
            burn_rate_threshold=alert.burn_rate,
            windows=windows,
            since=now,
        )
    return FreshnessRecovered(
        feature=feature.name,
        alert=alert.name,
        owner=feature.owner,
        sla_ms=feature.max_staleness_ms,
        objective=objective,
        burn_rate_threshold=alert.burn_rate,
        windows=windows,
        since=now,
        breached_since=before.since,
    )


def _log_change(update: AlertUpdate, event_id: str) -> None:
    rates = f"long {_rate(update.long_burn_rate)}, short {_rate(update.short_burn_rate)}"
    extra = {
        "feature": update.feature,
        "alert": update.alert,
        "owner": update.owner,
        "event_id": event_id,
        "long_burn_rate": update.long_burn_rate,
        "short_burn_rate": update.short_burn_rate,
        "burn_rate_threshold": update.burn_rate_threshold,
    }
    if update.firing:
        log.warning(
            "freshness breached: feature %s alert %s (owner %s) burns its budget at %s"
            " (threshold %s over %ss and %ss); event %s",
            update.feature,
            update.alert,
            update.owner or "-",
            rates,
            update.burn_rate_threshold,
            update.long_window_s,
            update.short_window_s,
            event_id,
            extra=extra,
        )
    else:
        log.info(
            "freshness recovered: feature %s alert %s (owner %s) burns its budget at %s"
            " (threshold %s); event %s",
            update.feature,
            update.alert,
            update.owner or "-",
            rates,
            update.burn_rate_threshold,
            event_id,
            extra=extra,
        )


def _rate(rate: float | None) -> str:
    return "no serves" if rate is None else f"{rate:.2f}"


def _show(updates: Sequence[AlertUpdate]) -> None:
    for update in updates:
        _gauges(
            update.feature,
            update.alert,
            update.firing,
            update.long_burn_rate,
            update.short_burn_rate,
        )


def _gauges(
    feature: str, alert: str, firing: bool, long_rate: float | None, short_rate: float | None
) -> None:
    ALERT_FIRING.labels(feature=feature, alert=alert).set(1 if firing else 0)
    for window, rate in (("long", long_rate), ("short", short_rate)):
        BURN_RATE.labels(feature=feature, alert=alert, window=window).set(
            math.nan if rate is None else rate
        )
