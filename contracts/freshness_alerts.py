"""The burn-rate alerts of ``GET /freshness/alerts``: each one's state and the last changes.

An alert is one of the registry's burn-rate alerts (``freshness.alerts``) evaluated
for one feature. Its state is shared by every gateway process: one evaluator at a
time updates it, and each change is published once as a CloudEvent on the alerts
topic (``scoregate.freshness.breached`` or ``scoregate.freshness.recovered``).
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class AlertStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One feature's burn-rate alert as last evaluated.

    Attributes:
        feature: The feature.
        alert: The alert's name in the registry.
        owner: The feature's owner.
        firing: Whether it is firing (breached).
        since: When it entered its state; null for one that never fired.
        evaluated_at: When its windows were last read.
        long_window_s: The long window's length.
        short_window_s: The short window's length.
        burn_rate_threshold: The rate both windows reach for it to fire.
        long_burn_rate: The long window's burn rate then; null without serves in it.
        short_burn_rate: The short window's burn rate then; null without serves in it.
        last_event_id: The CloudEvents id of the event of its last change, if any.
    """

    feature: str
    alert: str
    owner: str
    firing: bool
    since: datetime | None
    evaluated_at: datetime
    long_window_s: int
    short_window_s: int
    burn_rate_threshold: float
    long_burn_rate: float | None
    short_burn_rate: float | None
    last_event_id: str | None


class AlertChange(msgspec.Struct, frozen=True, kw_only=True):
    """One change of an alert's state, as published.

    Attributes:
        feature: The feature.
        alert: The alert's name.
        firing: Whether the change made it fire (breached) or clear (recovered).
        at: When the evaluator saw the change.
        event_id: The CloudEvents id of the event published for it.
        event_type: ``scoregate.freshness.breached`` or ``scoregate.freshness.recovered``.
        long_burn_rate: The long window's burn rate at the change.
        short_burn_rate: The short window's burn rate at the change.
    """

    feature: str
    alert: str
    firing: bool
    at: datetime
    event_id: str
    event_type: str
    long_burn_rate: float | None
    short_burn_rate: float | None


class FreshnessAlerts(msgspec.Struct, frozen=True, kw_only=True):
    """Every alert of the registry's features, firing ones first, and the last changes.

    Attributes:
        alerts: One per feature and alert that has been evaluated.
        changes: The most recent changes, newest first.
    """

    alerts: list[AlertStatus]
    changes: list[AlertChange]
