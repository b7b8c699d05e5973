"""ASGI entry point for servers that import an app factory (``scoregate serve``)."""

from __future__ import annotations

from litestar import Litestar

from gateway.app import create_app
from gateway.settings import GatewaySettings


def app_from_env() -> Litestar:
    """The gateway configured from ``SCOREGATE_*`` environment variables."""
    return create_app(GatewaySettings.from_env())
