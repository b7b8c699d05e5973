"""``POST /score``: one subject scored with one model, its decision committed first."""

from __future__ import annotations

import time
from typing import Annotated, Any

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody

from contracts.scoring import ScoreRequest, ScoreResponse
from gateway.admission import Admission
from gateway.auth import AUTH_DONE, Principal, requires
from gateway.http.openapi import error_responses
from gateway.masking import PiiMasker
from gateway.observability import record_stage
from gateway.registry import Registry
from gateway.scoring import Scorer

TimeoutHeader = Annotated[
    int | None, HeaderParameter(name="X-Request-Timeout-Ms", required=False, gt=0)
]


@post(
    "/score",
    status_code=200,
    opt=requires("scorer"),
    responses=error_responses(409, 422, 502, 503, 504),
)
async def score(
    data: JSONBody[ScoreRequest],
    request: Request[Principal, Any, Any],
    scorer: NamedDependency[Scorer],
    admission: NamedDependency[Admission],
    masker: NamedDependency[PiiMasker],
    registry: NamedDependency[Registry],
    timeout_ms: TimeoutHeader = None,
) -> ScoreResponse:
    """Score one subject with one model; the answer is committed to the audit store."""
    state = request.scope["state"]
    record_stage("decode", state.get(AUTH_DONE, time.time_ns()))
    # Metric labels come from the registry only: a caller cannot mint series.
    state["scoregate.model"] = data.model if data.model in registry.plans else "unknown"
    principal = request.user
    async with admission:
        response = await scorer.score(data, principal.key_id, timeout_ms)
    return response if principal.sees_pii else masker.response(response)


handlers = [score]
