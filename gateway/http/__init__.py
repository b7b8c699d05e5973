"""The HTTP API, one module per capability; :func:`route_handlers` lists them all.

Each module owns its handlers, which take the parts they use by name from the
providers of :class:`gateway.plugin.GatewayPlugin`. :mod:`gateway.http.errors` turns
every error into the one JSON error body.
"""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler

from gateway.http import (
    decisions,
    features,
    freshness,
    freshness_alerts,
    health,
    operations,
    reconciliation,
    scoring,
)


def route_handlers(*, metrics_public: bool) -> list[HTTPRouteHandler]:
    """Every route of the API; ``/metrics`` open or behind the operator role."""
    return [
        *scoring.handlers,
        *features.handlers,
        *decisions.handlers,
        *freshness.handlers,
        *freshness_alerts.handlers,
        *reconciliation.handlers,
        *health.handlers,
        *operations.handlers(metrics_public=metrics_public),
    ]
