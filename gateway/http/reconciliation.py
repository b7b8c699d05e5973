"""``GET /reconciliation``: the latest reconciliation run of each feature, for auditors.

And what reconciliation found of the values one decision served, which the auditor's
read of a decision (``GET /decisions/{id}`` and its page) adds to the record.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.params import QueryParameter

from contracts.decisions import DecisionRecord
from contracts.reconciliation import Finding, ReconciliationReport, ReconciliationRun
from gateway.auth import Principal
from gateway.errors import BadRequest
from gateway.http.openapi import error_responses
from gateway.masking import PiiMasker
from gateway.registry import Registry
from writeback import DecisionReads, ReconciliationStore

FeatureFilter = Annotated[str | None, QueryParameter(max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]


@get("/reconciliation", responses=error_responses(400, 403, 503))
async def reconciliation(
    request: Request[Principal, Any, Any],
    registry: NamedDependency[Registry],
    reconciliation_runs: NamedDependency[ReconciliationStore],
    masker: NamedDependency[PiiMasker],
    feature: FeatureFilter = None,
    findings: Annotated[int, QueryParameter(ge=0, le=1000)] = 100,
) -> ReconciliationReport:
    """Per feature, its latest reconciliation run and the entities that did not match.

    ``feature`` narrows the report to one feature; ``findings`` is how many findings
    each run lists at most (the run's counts cover all of them). Keys with the
    auditor or the operator role may read it; the values of PII features are masked
    for keys without the pii scope.
    """
    if not (request.user.has("auditor") or request.user.has("operator")):
        raise PermissionDeniedException("this needs the auditor or the operator role")
    if feature is not None and feature not in registry.features:
        raise BadRequest(f"no feature {feature!r} in the registry", field="feature")
    names = [feature] if feature is not None else list(registry.features)
    checked = [
        name
        for name in names
        if registry.features[name].reconcile and registry.features[name].source is not None
    ]
    runs = await latest_runs(reconciliation_runs, checked, findings, masker, request.user.sees_pii)
    return ReconciliationReport(
        runs=runs, unreconciled=[name for name in names if name not in checked]
    )


async def latest_runs(
    runs: ReconciliationStore,
    features: list[str],
    findings: int,
    masker: PiiMasker,
    sees_pii: bool,
) -> list[ReconciliationRun]:
    """The latest run of each feature, its findings' PII values masked unless ``sees_pii``."""
    latest = await runs.latest(features, findings)
    if sees_pii:
        return latest
    return [
        msgspec.structs.replace(run, findings=[_masked(masker, f) for f in run.findings])
        if run.feature in masker.pii
        else run
        for run in latest
    ]


def _masked(masker: PiiMasker, finding: Finding) -> Finding:
    return msgspec.structs.replace(
        finding,
        stored_value=masker.mask(finding.stored_value),
        source_value=masker.mask(finding.source_value),
    )


async def with_reconciliation(
    record: DecisionRecord, reads: DecisionReads, masker: PiiMasker, sees_pii: bool
) -> DecisionRecord:
    """The record with what reconciliation found of each value it served.

    A source value of a PII feature is masked for a reader without the pii scope, as
    the served value is.
    """
    checks = await reads.reconciliation(record)
    if not sees_pii:
        checks = {
            name: msgspec.structs.replace(check, source_value=masker.mask(check.source_value))
            if name in masker.pii
            else check
            for name, check in checks.items()
        }
    return msgspec.structs.replace(record, reconciliation=checks)


handlers = [reconciliation]
