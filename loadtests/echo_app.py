"""The benchmark's baseline: a bare Litestar + msgspec POST echo.

It takes the same JSON body as ``POST /score``, decodes it into a typed Struct of the
same shape and sends it back encoded, with nothing else on the path: no auth, no I/O,
no middleware. Whatever the gateway spends per request beyond this is its own work
(and its clients' work for Redis, the model and PostgreSQL).

    .venv/bin/python -m uvicorn --app-dir loadtests echo_app:app \\
        --loop uvloop --http httptools --no-access-log --port 8700
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, post


class EchoBody(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """The shape of a score request: model, entity ids, request-time context."""

    model: str
    entities: dict[str, str]
    request_id: str | None = None
    context: dict[str, float | int | bool | str] = msgspec.field(default_factory=dict)


@post("/echo", status_code=200)
async def echo(data: EchoBody) -> EchoBody:
    """Answer with the decoded body."""
    return data


app = Litestar(route_handlers=[echo], openapi_config=None)
