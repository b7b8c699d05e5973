"""``GET /freshness/alerts``, for auditors and operators: see :mod:`gateway.freshness.alerts`."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from contracts.freshness_alerts import FreshnessAlerts
from gateway.auth import Principal
from gateway.http.freshness import may_read_freshness
from gateway.http.openapi import error_responses
from gateway.registry import Registry
from writeback import FreshnessAlertStore

Changes = Annotated[int, QueryParameter(description="latest changes to list", ge=0, le=500)]


async def current_alerts(
    store: FreshnessAlertStore, registry: Registry, changes: int = 50
) -> FreshnessAlerts:
    """The stored states and changes of the registry's features and alerts only.

    States of a feature or an alert the registry no longer declares are left out.

    Raises:
        AuditUnavailable: PostgreSQL could not be reached.
    """
    stored = await store.read(registry.features, changes=changes)
    declared = {alert.name for alert in registry.file.freshness.alerts}
    return msgspec.structs.replace(
        stored,
        alerts=[status for status in stored.alerts if status.alert in declared],
        changes=[change for change in stored.changes if change.alert in declared],
    )


@get("/freshness/alerts", responses=error_responses(503))
async def freshness_alerts(
    request: Request[Principal, Any, Any],
    alert_states: NamedDependency[FreshnessAlertStore],
    registry: NamedDependency[Registry],
    changes: Changes = 50,
) -> FreshnessAlerts:
    """Every feature's burn-rate alerts, firing ones first, and their latest changes.

    One state per feature and alert of the registry, shared by every gateway process:
    whether it fires and since when, and the long and short windows' burn rates at its
    last evaluation. Each change was published once as a CloudEvent on the alerts
    topic (``scoregate.freshness.breached`` or ``scoregate.freshness.recovered``).
    """
    may_read_freshness(request.user)
    return await current_alerts(alert_states, registry, changes)


handlers = [freshness_alerts]
