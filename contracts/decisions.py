"""The decision record auditors read back, and the rollback API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from contracts.features import FeatureScalar, FeatureValue, Lineage
from contracts.reconciliation import FindingKind
from contracts.scoring import ModelRef, ScoreRequest

DeliveryStatus = Literal["pending", "delivered", "dead_lettered"]
WritebackStage = Literal["committed", "published", "dead_lettered", "redriven"]


class Subject(msgspec.Struct, frozen=True, kw_only=True):
    """The entity a decision is about (``customer`` keyed by ``customer_id`` = ``c-1``)."""

    entity: str
    key: str
    id: str


class StageTimings(msgspec.Struct, frozen=True, kw_only=True):
    """Wall time spent per stage of ``/score``, in milliseconds."""

    online_store_ms: float
    sources_ms: float
    model_ms: float
    total_ms: float


class WritebackState(msgspec.Struct, frozen=True, kw_only=True):
    """Where one outcome event of a decision stands on its way to Kafka."""

    event_id: str
    type: str
    status: DeliveryStatus
    attempts: int
    topic: str
    created_at: datetime
    partition: int | None = None
    offset: int | None = None
    delivered_at: datetime | None = None
    last_error: str | None = None
    dead_lettered_at: datetime | None = None
    redrives: int = 0


class WritebackEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One step in the history of an outcome event; entries are only ever appended.

    Attributes:
        stage: ``committed``: queued with its decision; ``published``: acknowledged
            by Kafka on ``topic`` at ``partition``/``offset``; ``dead_lettered``:
            written to the dead-letter topic ``topic`` after ``error``; ``redriven``:
            sent again by ``actor`` from the dead-letter queue.
    """

    event_id: str
    type: str
    stage: WritebackStage
    at: datetime
    topic: str
    attempts: int = 0
    partition: int | None = None
    offset: int | None = None
    error: str | None = None
    actor: str | None = None


class RollbackRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /decisions/{id}/rollback``."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class RollbackState(msgspec.Struct, frozen=True, kw_only=True):
    """Who rolled a decision back, when and why, and the compensating event's id."""

    decision_id: str
    reason: str
    rolled_back_by: str
    rolled_back_at: datetime
    event_id: str


class FeatureCheck(msgspec.Struct, frozen=True, kw_only=True):
    """What reconciliation found of the value a decision served for one feature.

    A run covered the served value when the value it read from the online store had
    the lineage id the decision served: the same upstream record, before or after the
    decision. When several runs covered it, a disagreement outranks an agreement,
    and among equals the latest counts.

    Attributes:
        run_id: The reconciliation run.
        found_at: When the run checked the value.
        kind: What it found (``match`` and ``newer_at_source`` agree with the source).
        agrees: The served value agrees with the source's, within the tolerance.
        source_value: The value the source answered with.
        source_event_time: The source record's event time.
        repaired: The run wrote the source's value into the online store.
    """

    run_id: str
    found_at: datetime
    kind: FindingKind
    agrees: bool
    source_value: FeatureScalar | None = None
    source_event_time: datetime | None = None
    repaired: bool = False


class DecisionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a decision saw and produced, as committed before the answer.

    The context fields never change after the commit; ``status``, ``writeback``,
    ``timeline``, ``rollback`` and ``reconciliation`` are read from their own rows
    when the record is served.

    Attributes:
        writeback: Where each outcome event of the decision stands now.
        timeline: How the events got there; it outlives the outbox rows that are
            purged after delivery.
        reconciliation: Per stored feature, whether reconciliation later found the
            served value to agree with its source (features no run covered are
            absent); filled in when an auditor reads the decision, empty as committed.
    """

    decision_id: str
    request_id: str
    caller: str
    model: ModelRef
    model_endpoint: str
    registry_digest: str
    subject: Subject
    request: ScoreRequest
    outputs: dict[str, Any]
    decision: str | None
    decision_rule: str | None
    degraded: bool
    features: dict[str, FeatureValue]
    lineage: dict[str, Lineage]
    problems: dict[str, str] = msgspec.field(default_factory=dict)
    received_at: datetime
    decided_at: datetime
    timings: StageTimings
    trace_id: str | None = None
    status: Literal["made", "rolled_back"] = "made"
    committed_at: datetime | None = None
    writeback: list[WritebackState] = msgspec.field(default_factory=list)
    rollback: RollbackState | None = None
    timeline: list[WritebackEntry] = msgspec.field(default_factory=list)
    reconciliation: dict[str, FeatureCheck] = msgspec.field(default_factory=dict)
