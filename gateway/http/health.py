"""``/health/live`` and ``/health/ready``: the probes, open without a key."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec

from gateway.health import HealthChecks, Readiness

_PUBLIC = {"exclude_from_auth": True}


@get("/health/live", opt=_PUBLIC)
async def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "live"}


@get(
    "/health/ready",
    opt=_PUBLIC,
    responses={
        503: ResponseSpec(
            data_container=Readiness,
            description="A dependency does not answer",
            generate_examples=False,
        )
    },
)
async def ready(health: NamedDependency[HealthChecks]) -> Response[Readiness]:
    """200 when PostgreSQL, Redis, Kafka and every model server answer; 503 otherwise."""
    readiness = await health.readiness()
    return Response(readiness, status_code=200 if readiness.ready else 503)


handlers = [live, ready]
