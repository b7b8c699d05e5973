"""Replay: score a recorded feature vector again and compare with what was decided."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from contracts.audit import ReplayOutcome, ReplayResult
from contracts.decisions import DecisionRecord
from contracts.scoring import ModelRef
from gateway.deadline import Deadline
from gateway.errors import GatewayError
from gateway.model_client import ModelClient, ModelRejected
from gateway.registry import Registry
from gateway.scoring import decide


class ReplayConflict(GatewayError):
    """The record cannot be replayed against the registry as it stands now."""

    status_code = 409


def outputs_match(original: Mapping[str, Any], replayed: Mapping[str, Any]) -> bool:
    """Equal outputs, numbers compared to a relative 1e-9 (float round trips)."""
    if original.keys() != replayed.keys():
        return False
    return all(_same(original[name], replayed[name]) for name in original)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


class Replayer:
    """Re-scores decision records through the model servers; writes nothing."""

    def __init__(self, registry: Registry, models: Mapping[str, ModelClient]) -> None:
        self._registry = registry
        self._models = models

    async def replay(self, record: DecisionRecord, model_version: str | None) -> ReplayResult:
        """The recorded vector scored again (by ``model_version`` if given)."""
        plan = self._registry.plans.get(record.model.name)
        if plan is None:
            raise ReplayConflict(
                f"model {record.model.name} is no longer in the registry", field="model"
            )
        missing = [name for name in plan.vector if name not in record.features]
        if missing:
            raise ReplayConflict(
                f"the record lacks features the model now takes: {', '.join(missing)}",
                field="features",
            )
        vector = [record.features[name].value for name in plan.vector]
        version = model_version or record.model.version
        try:
            outputs = await self._models[plan.model.name].infer(
                record.decision_id,
                vector,  # type: ignore[arg-type]
                Deadline(plan.model.deadline_ms / 1000),
                version=version,
            )
        except ModelRejected as exc:
            if model_version is None:
                raise
            # The caller chose the version: one the model server lacks, or one that
            # takes other inputs, is the caller's to change, not a fault of the gateway.
            raise ReplayConflict(
                f"version {model_version!r} cannot replay this decision: {exc.detail}",
                field="model_version",
            ) from exc
        label, _ = decide(plan.model.decision, outputs)
        original = ReplayOutcome(
            model=record.model, outputs=record.outputs, decision=record.decision
        )
        replayed = ReplayOutcome(
            model=ModelRef(name=record.model.name, version=version),
            outputs=outputs,
            decision=label,
        )
        match = label == record.decision and outputs_match(record.outputs, outputs)
        return ReplayResult(
            decision_id=record.decision_id, original=original, replayed=replayed, match=match
        )
