"""The auditor's pages: decisions searched and read in a browser, rendered on the server.

The pages carry no JavaScript. A login form takes an API key and keeps it in an
HttpOnly, SameSite=Strict cookie; the key stays the credential, with the same roles
and PII masking as the API. Every read of a decision is recorded with ``via="ui"``,
like the API's reads. :mod:`gateway.ui.pages` holds the handlers,
:mod:`gateway.ui.views` what a page shows of a decision.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment
from litestar import Router
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.di import Provide
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

from gateway.ui import pages
from gateway.ui.views import format_duration, format_time, format_value

TEMPLATES = Path(__file__).parent / "templates"


def _filters(environment: Environment) -> None:
    environment.filters["when"] = format_time
    environment.filters["duration"] = format_duration
    environment.filters["json"] = format_value


def ui_template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """The pages' templates (Jinja2, autoescaped) and their filters."""
    return TemplateConfig(
        directory=TEMPLATES,
        engine=JinjaTemplateEngine,
        engine_callback=lambda engine: _filters(engine.engine),
    )


def ui_router() -> Router:
    """The login form and the auditor's pages, under ``/ui``."""
    return Router(
        path="/ui",
        route_handlers=pages.handlers,
        dependencies={"viewer": Provide(pages.viewer, sync_to_thread=False)},
        exception_handlers=pages.exception_handlers,
        # Pages may show PII: nothing is cached, framed or leaked through a referrer.
        cache_control=CacheControlHeader(no_store=True),
        response_headers=[
            ResponseHeader(
                name="Content-Security-Policy",
                value="default-src 'none'; style-src 'unsafe-inline'; form-action 'self';"
                " frame-ancestors 'none'; base-uri 'none'",
            ),
            ResponseHeader(name="Referrer-Policy", value="no-referrer"),
            ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
        ],
        include_in_schema=False,
    )
