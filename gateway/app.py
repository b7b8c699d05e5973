"""The application factory: the plugin, the routes, the pages and the middleware, assembled.

Everything long-lived is opened and provided by :class:`gateway.plugin.GatewayPlugin`;
the routes are in :mod:`gateway.http` (one module per capability) and
:mod:`gateway.ui`; errors become answers in :mod:`gateway.http.errors`.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.exceptions import ImproperlyConfiguredException as ConfigurationError
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from opentelemetry import trace

from gateway.auth import ApiKeyAuthentication
from gateway.http import route_handlers
from gateway.http.errors import exception_handlers
from gateway.http.openapi import scalar_unions_as_type_lists, staleness_bounds_constrained
from gateway.observability import TracingMiddleware, refresh_tracing, tracer_provider_from_env
from gateway.plugin import GatewayPlugin
from gateway.registry import Registry
from gateway.settings import GatewaySettings
from gateway.ui import ui_router, ui_template_config


def create_app(settings: GatewaySettings, registry: Registry | None = None) -> Litestar:
    """The gateway application; it refuses to start without API keys."""
    if not settings.api_keys:
        raise ConfigurationError(
            "no API keys configured: set SCOREGATE_API_KEYS or SCOREGATE_API_KEYS_FILE"
            " (scoregate keys new --role admin makes one)"
        )
    provider = tracer_provider_from_env()
    if provider is not None:
        trace.set_tracer_provider(provider)
    refresh_tracing()
    plugin = GatewayPlugin(settings, registry)
    authentication = DefineMiddleware(
        ApiKeyAuthentication, keyring=plugin.keyring, exclude=["^/schema"]
    )
    app = Litestar(
        middleware=[TracingMiddleware, authentication],
        route_handlers=[
            *route_handlers(metrics_public=settings.metrics_public),
            ui_router(),
        ],
        plugins=[plugin],
        exception_handlers=exception_handlers,
        openapi_config=OpenAPIConfig(title="scoregate", version="1"),
        template_config=ui_template_config(),
    )
    # Built once here (and cached by Litestar), so the served schema is the corrected one.
    scalar_unions_as_type_lists(app.openapi_schema)
    staleness_bounds_constrained(app.openapi_schema)
    return app
