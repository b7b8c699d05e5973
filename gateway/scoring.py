"""``/score``: check the request, assemble features, call the model, commit, answer.

A ``request_id`` is an idempotency key per caller. Concurrent requests under one key
in one process share one scoring (single-flight); across processes the audit store's
unique key lets the first commit win. Each key is kept with the fingerprint of the
request it was used for, and a request that reuses the key for anything else (another
model, other entities, another context, another ``max_staleness_ms``) gets a 409
naming what differs.

A new key costs no query of its own: it is not looked up before scoring. The commit
claims the key in the same statement that writes the decision; if the key was claimed
before, nothing is written (no second record, no second event) and the decision
committed under it is the answer, or a 409 if it was made for another request. A
retry that reaches the process that answered first is answered from its
:class:`RecentAnswers`, without scoring again. One that reaches another process (or
comes after the answer aged out) is scored again and answered with the committed
decision; if that scoring fails (a model down), the decision is looked up and the
retry still gets it.

Every caller string that reaches PostgreSQL is checked before any work is done for
the request: a ``request_id`` with a control character, or a context string with a
NUL (which PostgreSQL's text and its JSON functions cannot hold), is a 400 naming the
field. Entity ids are checked by the registry's :class:`gateway.registry.EntityIds`.
A ``max_staleness_ms`` object may name only stored features of the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

import msgspec

from contracts.decisions import DecisionRecord, StageTimings, Subject
from contracts.events import DecisionMade
from contracts.features import FeatureScalar
from contracts.registry import DecisionPolicy
from contracts.scoring import ScoreRequest, ScoreResponse
from gateway.admission import Admission
from gateway.deadline import Deadline
from gateway.errors import BadRequest, Conflict, GatewayError, Unavailable, Unprocessable
from gateway.features.assembler import FeatureAssembler
from gateway.ids import new_decision_id
from gateway.masking import PiiMasker
from gateway.model_client import ModelClient
from gateway.observability import FeatureMetrics, current_trace_id, stage
from gateway.registry import CONTROL_CHARACTER, ModelPlan, Registry
from writeback import AuditStore, AuditUnavailable, RecordRefused, RequestMismatch

_canonical = msgspec.json.Encoder()
_answer_decoder = msgspec.json.Decoder(ScoreResponse)
# Answers are encoded into one buffer and copied out: encode() returns its whole
# growth allowance, which an answer kept for retries would hold for minutes.
_answer_buffer = bytearray()


Bound = int | Mapping[str, int]
"""A request's ``max_staleness_ms``: one bound for every stored feature, or one per name."""


class Asked(NamedTuple):
    """What a score request asks for: the parts its fingerprint covers.

    Attributes:
        model: the model's name.
        entities: entity ids by entity key, as sent.
        context: the request-time features, as their declared types.
        max_staleness_ms: the request's staleness bound as sent, None if it sent none
            (or an empty object, which bounds nothing).
    """

    model: str
    entities: Mapping[str, str]
    context: Mapping[str, FeatureScalar]
    max_staleness_ms: Bound | None = None

    def fingerprint(self) -> bytes:
        """The SHA-256 of the request's canonical JSON; the request id is not part of it.

        The JSON is ``[model, [[key, id], ...], [[name, value], ...]]``, entities and
        context sorted by name, context values as their declared types (so ``120`` and
        ``120.0`` for a ``float64`` are one value). A request with a staleness bound
        has it as a fourth member (the number, or ``[[name, ms], ...]`` sorted by
        name); without one, the fingerprint is what it was before bounds existed, so
        keys committed earlier still match their retries.
        """
        parts: list[Any] = [
            self.model,
            sorted(self.entities.items()),
            sorted(self.context.items()),
        ]
        bound = self.max_staleness_ms
        if bound is not None:
            parts.append(bound if isinstance(bound, int) else sorted(bound.items()))
        return hashlib.sha256(_canonical.encode(parts)).digest()

    def differences(self, other: Asked) -> list[str]:
        """The fields in which ``other`` asks for something else (``context.amount``)."""
        fields = [] if self.model == other.model else ["model"]
        for key in sorted(self.entities.keys() | other.entities.keys()):
            if self.entities.get(key) != other.entities.get(key):
                fields.append(f"entities.{key}")
        for name in sorted(self.context.keys() | other.context.keys()):
            if not _same(self.context.get(name), other.context.get(name)):
                fields.append(f"context.{name}")
        mine, theirs = self.max_staleness_ms, other.max_staleness_ms
        if isinstance(mine, Mapping) and isinstance(theirs, Mapping):
            for name in sorted(mine.keys() | theirs.keys()):
                if mine.get(name) != theirs.get(name):
                    fields.append(f"max_staleness_ms.{name}")
        elif mine != theirs:
            fields.append("max_staleness_ms")
        return fields


def sent_bound(request: ScoreRequest) -> Bound | None:
    """The request's ``max_staleness_ms``; None for none or an empty object (no bound)."""
    bound = request.max_staleness_ms
    if isinstance(bound, dict) and not bound:
        return None
    return bound


def requested_bounds(plan: ModelPlan, bound: Bound | None) -> dict[str, int] | None:
    """The request's staleness bound per stored feature of ``plan``, or None for none.

    A number bounds every stored feature; an object only the features it names.

    Raises:
        BadRequest: the object names something that is not a stored feature of the
            model (a context feature has no staleness to bound).
    """
    if bound is None:
        return None
    if isinstance(bound, int):
        return {feature.name: bound for feature in plan.features}
    bounds = {f.name: bound[f.name] for f in plan.features if f.name in bound}
    if len(bounds) < len(bound):
        name = next(name for name in bound if name not in bounds)
        kind = "a context feature, sent with the request" if name in plan.context else "unknown"
        raise BadRequest(
            f"model {plan.model.name} has no stored feature {name!r} to bound ({kind})",
            field=f"max_staleness_ms.{name}",
        )
    return bounds


def _same(a: FeatureScalar | None, b: FeatureScalar | None) -> bool:
    # 120 and 120.0 are one float64 value; True and 1 are not one value.
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _asked_by(record: DecisionRecord) -> Asked:
    request = record.request
    return Asked(request.model, request.entities, request.context, sent_bound(request))


def conflict(request_id: str, earlier: Asked, asked: Asked) -> Conflict | None:
    """The 409 for reusing ``request_id`` for ``asked``, or None if it asks the same."""
    fields = earlier.differences(asked)
    if not fields:
        return None
    return Conflict(
        f"request_id {request_id!r} was used for a different request:"
        f" {', '.join(fields)} differ{'s' if len(fields) == 1 else ''}",
        field=fields[0],
        extra={"request_id": request_id, "differs": fields},
    )


class Answer:
    """A committed answer to a score request, as its Struct and as its JSON.

    Each form is made at most once, from the other, when first asked for: an answer
    scored here starts as the Struct and is encoded once, for the answers kept for
    retries and for the body of a caller who sees it unmasked, which are then the same
    bytes; an answer kept for retries starts as its JSON and is decoded only for a
    caller whose copy must be masked.
    """

    __slots__ = ("_encoded", "_response")

    def __init__(self, response: ScoreResponse | None = None, encoded: bytes = b"") -> None:
        if response is None and not encoded:
            raise ValueError("an answer needs its response or its JSON")
        self._response = response
        self._encoded = encoded

    @property
    def response(self) -> ScoreResponse:
        """The answer, as it was committed."""
        if self._response is None:
            self._response = _answer_decoder.decode(self._encoded)
        return self._response

    @property
    def encoded(self) -> bytes:
        """The answer's JSON, as the API sends a :class:`ScoreResponse`."""
        if not self._encoded:
            _canonical.encode_into(self._response, _answer_buffer)
            self._encoded = bytes(_answer_buffer)
        return self._encoded


@dataclass(frozen=True, slots=True)
class _Checked:
    """A request checked against the registry, and when it arrived."""

    request: ScoreRequest
    plan: ModelPlan
    entity_ids: dict[str, str]
    context: dict[str, FeatureScalar]
    bound: Bound | None
    bounds: dict[str, int] | None
    received_at: datetime
    started: float

    @property
    def asked(self) -> Asked:
        return Asked(self.plan.model.name, self.request.entities, self.context, self.bound)


@dataclass(frozen=True, slots=True)
class _Flight:
    """The scoring of one (caller, request_id) in flight, which its duplicates await."""

    asked: Asked
    fingerprint: bytes
    task: asyncio.Task[Answer]


@dataclass(frozen=True, slots=True)
class _Answered:
    """A committed answer under one (caller, request_id), and what it was asked for."""

    asked: Asked
    fingerprint: bytes
    # Kept as JSON: half the memory of the Struct, sent as it is, decoded only to mask.
    encoded: bytes
    at: float

    @property
    def response(self) -> ScoreResponse:
        """The answer, as it was committed."""
        return _answer_decoder.decode(self.encoded)

    @property
    def answer(self) -> Answer:
        """The answer, from its JSON."""
        return Answer(encoded=self.encoded)


def _same_request(
    request_id: str, earlier: _Flight | _Answered, asked: Asked, fingerprint: bytes
) -> None:
    """Raise the 409 if ``asked`` (of ``fingerprint``) is not what ``earlier`` asked for."""
    if earlier.fingerprint != fingerprint:
        refused = conflict(request_id, earlier.asked, asked)
        if refused is not None:
            raise refused


class RecentAnswers:
    """The answers this process committed lately, by (caller, request_id).

    A retry that reaches the process that answered first is answered from here: no
    query and no model call. Bounded in count (the least recently used go first) and
    in age, so memory stays flat and no answer outlives its record by the audit
    store's retention, which is days, not minutes. An answer of the sample model
    with its features takes about 4 kB, so the default 4096 hold some 16 MB.

    Args:
        capacity: How many answers are kept; 0 keeps none.
        ttl_s: How long an answer is kept after it was committed.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        capacity: int = 4096,
        ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._clock = clock
        self._answers: OrderedDict[tuple[str, str], _Answered] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: tuple[str, str]) -> _Answered | None:
        """The answer kept under ``(caller, request_id)``, unless it aged out."""
        answered = self._answers.get(key)
        if answered is None:
            return None
        if self._clock() - answered.at >= self.ttl_s:
            del self._answers[key]
            return None
        self._answers.move_to_end(key)
        return answered

    def put(self, key: tuple[str, str], asked: Asked, fingerprint: bytes, answer: Answer) -> None:
        """Keep the committed answer to ``asked`` under ``(caller, request_id)``.

        Its JSON is kept: encoded here if it was not yet, and then the caller's body too.
        """
        if self.capacity <= 0:
            return
        answered = _Answered(asked, fingerprint, answer.encoded, self._clock())
        self._answers[key] = answered
        self._answers.move_to_end(key)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)


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


def refusal(exc: RecordRefused, subject_key: str) -> GatewayError:
    """The answer to a record PostgreSQL cannot store: a 400 if the value is the caller's.

    A value the caller sent (the request id, a context value, an entity id) is named
    as the request field; one the gateway gathered (a served feature's lineage) is a
    422 naming where it sits in the record.
    """
    field = exc.field
    asked: str | None = None
    if field is not None:
        if field.startswith("request."):
            asked = field.removeprefix("request.")
        elif field == "request_id":
            asked = field
        elif field in ("subject.id", "key"):
            asked = f"entities.{subject_key}"
    if asked is not None:
        return BadRequest(f"{asked}: {exc.reason}", field=asked)
    return Unprocessable(
        f"the decision cannot be recorded: {exc}",
        extra=None if field is None else {"record_field": field},
    )


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


class ScoringParts(NamedTuple):
    """What ``POST /score`` uses, provided to it as one dependency.

    Litestar resolves a handler's dependencies, when it has more than one, concurrently
    in a task group of their own: on every request, about a tenth of the gateway's CPU
    for ``/score``'s three. One dependency is resolved in line.
    """

    scorer: Scorer
    admission: Admission
    masker: PiiMasker


class Scorer:
    """Turns a score request into a committed decision.

    Args:
        registry: The models, entities and features.
        assembler: Gathers each request's features.
        models: The model clients by model name.
        audit: Where decisions are committed.
        recent: The answers kept for retries (default: 4096 for ten minutes).

    Attributes:
        recent: The answers kept for retries to this process.
    """

    def __init__(
        self,
        registry: Registry,
        assembler: FeatureAssembler,
        models: Mapping[str, ModelClient],
        audit: AuditStore,
        recent: RecentAnswers | None = None,
    ) -> None:
        self._registry = registry
        self._assembler = assembler
        self._models = models
        self._audit = audit
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._served = FeatureMetrics()
        self.recent = RecentAnswers() if recent is None else recent

    def _plan(self, request: ScoreRequest) -> ModelPlan:
        plan = self._registry.plans.get(request.model)
        if plan is None:
            raise BadRequest(f"unknown model {request.model!r}", field="model")
        return plan

    def model_label(self, model: str) -> str:
        """``model`` as a metric label: a registry model's name, or ``unknown``.

        Labels come from the registry only, so a caller cannot mint series.
        """
        return model if model in self._registry.plans else "unknown"

    @staticmethod
    def _entity_ids(plan: ModelPlan, entities: Mapping[str, str]) -> dict[str, str]:
        wanted = plan.entity_keys
        for key in entities:
            if key not in wanted:
                raise BadRequest(
                    f"model {plan.model.name} does not use entity key {key!r}",
                    field=f"entities.{key}",
                )
        ids = {}
        for key, entity in wanted.items():
            entity_id = entities.get(key)
            if entity_id is None:
                raise BadRequest(f"missing entity key {key!r}", field=f"entities.{key}")
            # Ids go into source URLs and store keys: only ids the entity admits.
            problem = entity.ids.problem(entity_id)
            if problem is not None:
                raise BadRequest(problem, field=f"entities.{key}")
            ids[entity.entity] = entity_id
        return ids

    @staticmethod
    def _context(plan: ModelPlan, context: Mapping[str, FeatureScalar]) -> dict[str, FeatureScalar]:
        declared = plan.context
        for name in context:
            if name not in declared:
                raise BadRequest(
                    f"model {plan.model.name} declares no context feature {name!r}",
                    field=f"context.{name}",
                )
        values = {}
        for name, coerce in declared.items():
            if name not in context:
                raise BadRequest(f"missing context feature {name!r}", field=f"context.{name}")
            try:
                value = coerce(context[name])
            except TypeError as exc:
                raise BadRequest(f"context.{name}: {exc}", field=f"context.{name}") from exc
            if isinstance(value, str) and "\x00" in value:
                raise BadRequest(
                    f"context.{name}: a NUL character cannot be stored", field=f"context.{name}"
                )
            values[name] = value
        return values

    async def score(
        self, request: ScoreRequest, caller: str, timeout_ms: int | None = None
    ) -> Answer:
        """Score one request; the answer exists only once its audit record is committed.

        With a ``request_id``, the caller's earlier decision under it comes back, and
        concurrent duplicates wait for one scoring (and share its answer).

        Raises:
            BadRequest: the request does not fit the registry, or carries a value
                PostgreSQL cannot store.
            Conflict: the request id was used for a different request.
            Unprocessable: the decision holds a value PostgreSQL cannot store that
                the caller did not send.
        """
        started = time.perf_counter()
        received_at = datetime.now(UTC)
        if request.request_id is not None and CONTROL_CHARACTER.search(request.request_id):
            raise BadRequest("request_id must not hold control characters", field="request_id")
        plan = self._plan(request)
        bound = sent_bound(request)
        checked = _Checked(
            request=request,
            plan=plan,
            entity_ids=self._entity_ids(plan, request.entities),
            context=self._context(plan, request.context),
            bound=bound,
            bounds=requested_bounds(plan, bound),
            received_at=received_at,
            started=started,
        )
        if request.request_id is None:
            record, event = await self._make(checked, caller, timeout_ms)
            return Answer(await self._commit(checked, record, event, None))
        asked = checked.asked
        fingerprint = asked.fingerprint()
        key = (caller, request.request_id)
        flight = self._flights.get(key)
        if flight is None:
            answered = self.recent.get(key)
            if answered is not None:
                _same_request(request.request_id, answered, asked, fingerprint)
                return answered.answer
            task = asyncio.create_task(
                self._once(checked, caller, request.request_id, fingerprint, timeout_ms)
            )
            flight = _Flight(asked=asked, fingerprint=fingerprint, task=task)
            self._flights[key] = flight
            task.add_done_callback(partial(self._landed, key, flight))
        else:
            _same_request(request.request_id, flight, asked, fingerprint)
        # Shielded: one duplicate giving up must not cancel the scoring the others await.
        return await asyncio.shield(flight.task)

    def _landed(self, key: tuple[str, str], flight: _Flight, task: asyncio.Task[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved here so a failure no one awaited is not logged

    async def _once(
        self,
        checked: _Checked,
        caller: str,
        request_id: str,
        fingerprint: bytes,
        timeout_ms: int | None,
    ) -> Answer:
        """Score a request with an id; its commit tells whether the id was answered before.

        No lookup comes first: a new id costs only its commit, and the commit of an id
        committed before writes nothing and answers with that decision (or a 409).
        Only when features or the model fail is the id looked up, so that a retry
        whose first attempt was committed gets that answer rather than the error.
        """
        try:
            record, event = await self._make(checked, caller, timeout_ms)
        except GatewayError:
            earlier = await self._on_record(checked, caller, request_id, fingerprint)
            if earlier is None:
                raise
            response = earlier
        else:
            response = await self._commit(checked, record, event, fingerprint)
        answer = Answer(response)
        # Kept before the flight lands, so a duplicate finds the flight or the answer.
        self.recent.put((caller, request_id), checked.asked, fingerprint, answer)
        return answer

    async def _on_record(
        self, checked: _Checked, caller: str, request_id: str, fingerprint: bytes
    ) -> ScoreResponse | None:
        """The answer committed under the request's id, or None (also if none can be read)."""
        try:
            earlier = await self._audit.find_by_request(caller, request_id, fingerprint)
        except RequestMismatch as exc:
            return self._earlier(exc.existing, checked)
        except AuditUnavailable:
            return None
        return None if earlier is None else response_of(earlier)

    @staticmethod
    def _earlier(existing: DecisionRecord, checked: _Checked) -> ScoreResponse:
        """The earlier decision under the request's id, if it was made for this request."""
        refused = conflict(existing.request_id, _asked_by(existing), checked.asked)
        if refused is not None:
            raise refused
        # The fingerprints differ but every field is the same (a key fingerprinted
        # another way): it is the same request.
        return response_of(existing)

    async def _make(
        self, checked: _Checked, caller: str, timeout_ms: int | None
    ) -> tuple[DecisionRecord, DecisionMade]:
        """Assemble the features, call the model, and make the record and its event."""
        request, plan, entity_ids = checked.request, checked.plan, checked.entity_ids
        context, received_at, started = checked.context, checked.received_at, checked.started
        model = plan.model
        budget_ms = model.deadline_ms if timeout_ms is None else min(timeout_ms, model.deadline_ms)
        deadline = Deadline(budget_ms / 1000)
        decision_id = new_decision_id()
        # Features may not eat the model's share: it keeps its timeout, or half of
        # a budget too small for that, and a hanging source costs only the rest.
        model_reserve_s = min(model.timeout_ms / 1000, deadline.remaining() / 2)
        assembly = await self._assembler.assemble(
            plan,
            entity_ids,
            context,
            deadline.reserving(model_reserve_s),
            received_at,
            checked.bounds,
        )
        self._served.observe(assembly.values)
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
        model_ref = plan.model_ref
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
        return record, event

    async def _commit(
        self,
        checked: _Checked,
        record: DecisionRecord,
        event: DecisionMade,
        fingerprint: bytes | None,
    ) -> ScoreResponse:
        """Commit the decision and answer with it, or with the one committed before it."""
        try:
            with stage("audit commit"):
                committed = await self._audit.commit(record, event, record.subject.id, fingerprint)
        except RequestMismatch as exc:
            # The id was committed before, for a different request (by another
            # process, or longer ago than this one keeps its answers).
            return self._earlier(exc.existing, checked)
        except RecordRefused as exc:
            raise refusal(exc, record.subject.key) from exc
        except AuditUnavailable as exc:
            raise Unavailable(
                "the audit store is unavailable; no decision is given that cannot be audited",
                field="audit",
            ) from exc
        return response_of(committed)
