"""``POST /score``: one subject scored with one model, its decision committed first."""

from __future__ import annotations

import time
from typing import Annotated, Any, cast

from litestar import MediaType, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody

from contracts.scoring import ScoreRequest, ScoreResponse
from gateway.auth import AUTH_DONE, Principal, requires
from gateway.http.openapi import error_responses
from gateway.observability import record_stage
from gateway.scoring import Answer, ScoringParts

TimeoutHeader = Annotated[
    int | None, HeaderParameter(name="X-Request-Timeout-Ms", required=False, gt=0)
]


def _sent_as_json(answer: Answer) -> Response[ScoreResponse]:
    """The answer's JSON as the body, as it is: encoded once, and kept for retries too."""
    return cast("Response[ScoreResponse]", Response(answer.encoded, media_type=MediaType.JSON))


@post(
    "/score",
    status_code=200,
    opt=requires("scorer"),
    responses=error_responses(409, 422, 502, 503, 504),
)
async def score(
    data: JSONBody[ScoreRequest],
    request: Request[Principal, Any, Any],
    scoring: NamedDependency[ScoringParts],
    timeout_ms: TimeoutHeader = None,
) -> Response[ScoreResponse]:
    """Score one subject with one model; the answer is committed to the audit store."""
    scorer, admission, masker = scoring
    state = request.scope["state"]
    record_stage("decode", state.get(AUTH_DONE, time.time_ns()))
    state["scoregate.model"] = scorer.model_label(data.model)
    principal = request.user
    async with admission:
        answer = await scorer.score(data, principal.key_id, timeout_ms)
    if principal.sees_pii:
        return _sent_as_json(answer)
    masked = masker.response(answer.response)
    if masked is answer.response:
        # Nothing to mask in it: the same body as for a caller who sees PII.
        return _sent_as_json(answer)
    return Response(masked)


handlers = [score]
