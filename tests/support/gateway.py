"""A gateway app served over real HTTP, and registry variants for one test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec
import uvicorn
from litestar import Litestar

from gateway.settings import GatewaySettings
from scoregate_dev.broker import free_port
from tests.support.keys import bearer


def registry_variant(
    settings: GatewaySettings, path: Path, *edits: tuple[str, str]
) -> GatewaySettings:
    """``settings`` with a copy of the test registry edited by (old, new) replacements."""
    text = settings.registry_path.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return msgspec.structs.replace(settings, registry_path=path)


def roomy() -> list[tuple[str, str]]:
    """Edits that give sources and the model a minute: held replies and a loaded
    machine cost time, never a timeout."""
    return [
        ("timeout_ms = 150", "timeout_ms = 60000"),
        ("timeout_ms = 300\n", "timeout_ms = 60000\ndeadline_ms = 120000\n"),
    ]


@asynccontextmanager
async def serve(app: Litestar, who: str = "admin") -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app`` on a real HTTP server (uvicorn, in this event loop) and a client for it.

    Requests from the client are truly concurrent, as they are in production; they
    carry the key of ``who`` unless a request says otherwise.
    """
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=10, limits=limits, headers=bearer(who)
    ) as http:
        yield http
    server.should_exit = True
    await task
