"""``POST /features/push`` and ``GET /registry``: writing features, and what they are."""

from __future__ import annotations

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from contracts.features import PushRequest, PushResponse
from contracts.registry import RegistryFile
from gateway.auth import requires
from gateway.features.push import FeaturePusher
from gateway.http.openapi import error_responses
from gateway.registry import Registry


@post(
    "/features/push",
    status_code=200,
    opt=requires("feature_writer"),
    responses=error_responses(503),
)
async def push_features(
    data: JSONBody[PushRequest], pusher: NamedDependency[FeaturePusher]
) -> PushResponse:
    """Write feature values of one entity; older event times never overwrite newer."""
    return await pusher.push(data)


@get("/registry", responses=error_responses())
async def registry_file(registry: NamedDependency[Registry]) -> RegistryFile:
    """The registry: entities, sources, features and models, as loaded."""
    return registry.file


handlers = [push_features, registry_file]
