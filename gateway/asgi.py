"""ASGI entry point for servers that import an app factory (``scoregate serve``)."""

from __future__ import annotations

from litestar import Litestar

from gateway.app import create_app
from gateway.loop_lag import settle_heap
from gateway.settings import GatewaySettings


def app_from_env() -> Litestar:
    """The gateway configured from ``SCOREGATE_*`` environment variables.

    Once every part is open, what start-up built is kept out of the garbage collector's
    full collections (:func:`gateway.loop_lag.settle_heap`): a serving process lives
    with it until it exits.
    """
    app = create_app(GatewaySettings.from_env())
    app.on_startup.append(settle_heap)
    return app
