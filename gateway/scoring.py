"""``/score``: check the request, assemble features, call the model, commit, answer."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from contracts.decisions import DecisionRecord, StageTimings, Subject
from contracts.events import DecisionMade
from contracts.features import FeatureScalar
from contracts.registry import DecisionPolicy
from contracts.scoring import ModelRef, ScoreRequest, ScoreResponse
from gateway.deadline import Deadline
from gateway.errors import BadRequest, Unavailable
from gateway.features.assembler import FeatureAssembler
from gateway.ids import new_decision_id
from gateway.model_client import ModelClient
from gateway.observability import current_trace_id, observe_features, stage
from gateway.registry import ModelPlan, Registry, coerce
from writeback.audit_store import AuditStore, AuditUnavailable


def decide(
    policy: DecisionPolicy | None, outputs: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    """The label of the first rule the policy output reaches, and the rule that chose it."""
    if policy is None:
        return None, None
    raw = outputs.get(policy.output)
    score = raw[0] if isinstance(raw, list) and raw else raw
    if not isinstance(score, int | float) or isinstance(score, bool):
        return None, None
    for rule in policy.rules:
        if score >= rule.min:
            return rule.label, f"{policy.output}>={rule.min} (policy {policy.version})"
    return None, None


def response_of(record: DecisionRecord) -> ScoreResponse:
    """The answer to a request, as recorded (also for a repeated ``request_id``)."""
    return ScoreResponse(
        decision_id=record.decision_id,
        request_id=record.request_id,
        model=record.model,
        outputs=record.outputs,
        decision=record.decision,
        degraded=record.degraded,
        features=record.features,
    )


class Scorer:
    """Turns a score request into a committed decision."""

    def __init__(
        self,
        registry: Registry,
        assembler: FeatureAssembler,
        models: Mapping[str, ModelClient],
        audit: AuditStore,
    ) -> None:
        self._registry = registry
        self._assembler = assembler
        self._models = models
        self._audit = audit

    def _plan(self, request: ScoreRequest) -> ModelPlan:
        plan = self._registry.plans.get(request.model)
        if plan is None:
            raise BadRequest(f"unknown model {request.model!r}", field="model")
        return plan

    def _entity_ids(self, plan: ModelPlan, entities: Mapping[str, str]) -> dict[str, str]:
        wanted = {entity.key: entity.name for entity in plan.entities}
        for key in entities:
            if key not in wanted:
                raise BadRequest(
                    f"model {plan.model.name} does not use entity key {key!r}",
                    field=f"entities.{key}",
                )
        ids = {}
        for key, entity in wanted.items():
            if key not in entities:
                raise BadRequest(f"missing entity key {key!r}", field=f"entities.{key}")
            # Ids go into source URLs and store keys: only ids the entity admits.
            problem = self._registry.ids[entity].problem(entities[key])
            if problem is not None:
                raise BadRequest(problem, field=f"entities.{key}")
            ids[entity] = entities[key]
        return ids

    @staticmethod
    def _context(plan: ModelPlan, context: Mapping[str, FeatureScalar]) -> dict[str, FeatureScalar]:
        declared = {c.name: c for c in plan.model.context}
        for name in context:
            if name not in declared:
                raise BadRequest(
                    f"model {plan.model.name} declares no context feature {name!r}",
                    field=f"context.{name}",
                )
        values = {}
        for name, spec in declared.items():
            if name not in context:
                raise BadRequest(f"missing context feature {name!r}", field=f"context.{name}")
            try:
                values[name] = coerce(context[name], spec.dtype)
            except TypeError as exc:
                raise BadRequest(f"context.{name}: {exc}", field=f"context.{name}") from exc
        return values

    async def score(
        self, request: ScoreRequest, caller: str, timeout_ms: int | None = None
    ) -> ScoreResponse:
        """Score one request; the answer exists only once its audit record is committed."""
        started = time.perf_counter()
        received_at = datetime.now(UTC)
        plan = self._plan(request)
        entity_ids = self._entity_ids(plan, request.entities)
        context = self._context(plan, request.context)
        if request.request_id is not None:
            earlier = await self._find(caller, request.request_id)
            if earlier is not None:
                return response_of(earlier)

        model = plan.model
        budget_ms = model.deadline_ms if timeout_ms is None else min(timeout_ms, model.deadline_ms)
        deadline = Deadline(budget_ms / 1000)
        decision_id = new_decision_id()
        # Features may not eat the model's share: it keeps its timeout, or half of
        # a budget too small for that, and a hanging source costs only the rest.
        model_reserve_s = min(model.timeout_ms / 1000, deadline.remaining() / 2)
        assembly = await self._assembler.assemble(
            plan, entity_ids, context, deadline.reserving(model_reserve_s), received_at
        )
        observe_features(assembly.values)
        vector = [assembly.values[name].value for name in plan.vector]
        model_started = time.perf_counter()
        outputs = await self._models[model.name].infer(
            decision_id,
            vector,  # type: ignore[arg-type]
            deadline,
        )
        model_ms = (time.perf_counter() - model_started) * 1000
        label, rule = decide(model.decision, outputs)
        decided_at = datetime.now(UTC)
        subject = Subject(
            entity=plan.subject.name, key=plan.subject.key, id=entity_ids[plan.subject.name]
        )
        model_ref = ModelRef(name=model.name, version=model.version)
        record = DecisionRecord(
            decision_id=decision_id,
            request_id=request.request_id or decision_id,
            caller=caller,
            model=model_ref,
            model_endpoint=model.endpoint,
            registry_digest=self._registry.digest,
            subject=subject,
            request=request,
            outputs=outputs,
            decision=label,
            decision_rule=rule,
            degraded=assembly.degraded,
            features=assembly.values,
            lineage=assembly.lineage,
            problems=assembly.problems,
            received_at=received_at,
            decided_at=decided_at,
            trace_id=current_trace_id(),
            timings=StageTimings(
                online_store_ms=round(assembly.online_store_ms, 3),
                sources_ms=round(assembly.sources_ms, 3),
                model_ms=round(model_ms, 3),
                total_ms=round((time.perf_counter() - started) * 1000, 3),
            ),
        )
        event = DecisionMade(
            decision_id=decision_id,
            request_id=record.request_id,
            model=model_ref,
            subject=subject,
            outputs=outputs,
            decision=label,
            degraded=assembly.degraded,
            features={name: assembly.values[name].value for name in plan.published},
            decided_at=decided_at,
        )
        try:
            with stage("audit commit"):
                committed = await self._audit.commit(record, event, key=subject.id)
        except AuditUnavailable as exc:
            raise Unavailable(
                "the audit store is unavailable; no decision is given that cannot be audited",
                field="audit",
            ) from exc
        return response_of(committed)

    async def _find(self, caller: str, request_id: str) -> DecisionRecord | None:
        try:
            return await self._audit.find_by_request(caller, request_id)
        except AuditUnavailable as exc:
            raise Unavailable("the audit store is unavailable", field="audit") from exc
