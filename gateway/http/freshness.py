"""``GET /freshness``, for auditors and operators: see :mod:`gateway.freshness.report`."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.params import QueryParameter

from contracts.freshness import FreshnessReport
from gateway.auth import Principal
from gateway.errors import NotFound
from gateway.freshness.report import FreshnessReporter
from gateway.http.openapi import error_responses

FeatureName = Annotated[
    str | None,
    QueryParameter(
        description="only this feature of the registry",
        max_length=128,
        pattern=r"^[^\x00-\x1f\x7f]*$",
    ),
]


def may_read_freshness(principal: Principal) -> None:
    """Admit keys holding the auditor or the operator role (or admin keys).

    Raises:
        PermissionDeniedException: The key holds neither.
    """
    if not (principal.has("auditor") or principal.has("operator")):
        raise PermissionDeniedException("this needs the auditor or the operator role")


@get("/freshness", responses=error_responses(404, 503))
async def freshness_report(
    request: Request[Principal, Any, Any],
    freshness: NamedDependency[FreshnessReporter],
    feature: FeatureName = None,
) -> FreshnessReport:
    """Every feature's freshness SLA against how it was served, across all processes.

    Per feature: its SLA and owner, served staleness and shares by status over the last
    5 minutes, hour and day, ingest lag, last event times, consumer lag, its source's
    breaker and schema changes, summed over every gateway and ingest process.

    Figures may be up to two seconds old (a report is shared by the callers of that
    time); served staleness counts decisions once they are rolled up (``backlog`` says
    how many are not yet).
    """
    may_read_freshness(request.user)
    try:
        return await freshness.report(feature)
    except KeyError as exc:
        raise NotFound(f"no feature {feature!r} in the registry", field="feature") from exc


handlers = [freshness_report]
