"""Decision records and their events, made whole, and committed through the audit store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.decisions import DecisionRecord, StageTimings, Subject
from contracts.events import DecisionMade
from contracts.features import FeatureValue, Lineage
from contracts.scoring import ModelRef, ScoreRequest
from writeback import AuditStore


def make_record(customer: str = "c-1", **overrides: Any) -> DecisionRecord:
    """A complete decision record about ``customer``; keyword arguments replace fields."""
    now = datetime.now(UTC)
    request_id = overrides.pop("request_id", f"req-{uuid.uuid4().hex[:8]}")
    lineage_id = f"lin-{uuid.uuid4().hex[:8]}"
    fields: dict[str, Any] = {
        "decision_id": str(uuid.uuid4()),
        "request_id": request_id,
        "caller": "scorer-a",
        "model": ModelRef(name="credit", version="3"),
        "model_endpoint": "http://127.0.0.1:8081/v2/models/credit/versions/3/infer",
        "registry_digest": "sha256:0f0f",
        "subject": Subject(entity="customer", key="customer_id", id=customer),
        "request": ScoreRequest(
            model="credit",
            entities={"customer_id": customer},
            request_id=request_id,
            context={"amount": 120.5},
        ),
        "outputs": {"predict": [0.12]},
        "decision": "approve",
        "decision_rule": "predict < 0.5",
        "degraded": False,
        "features": {
            "txn_count_7d": FeatureValue(
                value=4,
                status="fresh",
                source="online_store",
                event_time=now - timedelta(seconds=30),
                ingested_at=now - timedelta(seconds=29),
                staleness_ms=30000,
                max_staleness_ms=60000,
                lineage_id=lineage_id,
                schema_version=1,
            ),
            "amount": FeatureValue(value=120.5, status="request", source="request"),
        },
        "lineage": {
            lineage_id: Lineage(
                lineage_id=lineage_id,
                kind="push",
                source_system="payments",
                source_ref="payments.txn/offset/17",
                entity="customer",
                entity_id=customer,
                event_time=now - timedelta(seconds=30),
                ingested_at=now - timedelta(seconds=29),
            )
        },
        "received_at": now - timedelta(milliseconds=3),
        "decided_at": now,
        "timings": StageTimings(online_store_ms=0.4, sources_ms=0.0, model_ms=1.1, total_ms=2.0),
    }
    fields.update(overrides)
    return DecisionRecord(**fields)


def make_event(record: DecisionRecord) -> DecisionMade:
    """The ``decision.made`` event of a record."""
    return DecisionMade(
        decision_id=record.decision_id,
        request_id=record.request_id,
        model=record.model,
        subject=record.subject,
        outputs=record.outputs,
        decision=record.decision,
        degraded=record.degraded,
        features={name: feature.value for name, feature in record.features.items()},
        decided_at=record.decided_at,
    )


async def commit(store: AuditStore, record: DecisionRecord) -> DecisionRecord:
    """Commit a record with its event, keyed by its subject's id."""
    return await store.commit(record, make_event(record), record.subject.id)
