"""Outcome events published to Kafka as CloudEvents (binary mode).

The record value is one of these Structs as JSON; the CloudEvents attributes travel
as ``ce_*`` headers. ``type`` in the body repeats ``ce_type`` so a consumer that only
keeps values can still tell the kinds apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from contracts.decisions import Subject
from contracts.features import FeatureScalar
from contracts.scoring import ModelRef

DECISION_MADE = "scoregate.decision.made"
DECISION_ROLLED_BACK = "scoregate.decision.rolled_back"


class DecisionMade(msgspec.Struct, frozen=True, kw_only=True, tag=DECISION_MADE, tag_field="type"):
    """A decision was made and committed."""

    decision_id: str
    request_id: str
    model: ModelRef
    subject: Subject
    outputs: dict[str, Any]
    decision: str | None
    degraded: bool
    features: dict[str, FeatureScalar | None]
    decided_at: datetime


class DecisionRolledBack(
    msgspec.Struct, frozen=True, kw_only=True, tag=DECISION_ROLLED_BACK, tag_field="type"
):
    """A decision was rolled back; consumers undo what they did on it."""

    decision_id: str
    request_id: str
    model: ModelRef
    subject: Subject
    reason: str
    rolled_back_by: str
    rolled_back_at: datetime


OutcomeEvent = DecisionMade | DecisionRolledBack
