"""Outcome events and freshness alerts published to Kafka as CloudEvents (binary mode).

The record value is one of these Structs as JSON; the CloudEvents attributes travel
as ``ce_*`` headers. ``type`` in the body repeats ``ce_type`` so a consumer that only
keeps values can still tell the kinds apart. Outcome events go to the outcome topic
(``ce_subject`` is the decision id), freshness alerts to the alerts topic
(``ce_subject`` is the feature).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from contracts.decisions import Subject
from contracts.features import FeatureScalar
from contracts.registry import FreshnessObjective
from contracts.scoring import ModelRef

DECISION_MADE = "scoregate.decision.made"
DECISION_ROLLED_BACK = "scoregate.decision.rolled_back"
FRESHNESS_BREACHED = "scoregate.freshness.breached"
FRESHNESS_RECOVERED = "scoregate.freshness.recovered"


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


class AlertWindow(msgspec.Struct, frozen=True, kw_only=True):
    """One window of a burn-rate alert, as evaluated when the alert changed state.

    Attributes:
        window: Which of the alert's two windows.
        seconds: Its length.
        served: Serves of the feature in it (all gateway processes).
        within_sla: Those within the feature's SLA.
        burn_rate: ``(1 - within_sla / served) / (1 - target)``; null without serves.
    """

    window: Literal["long", "short"]
    seconds: int
    served: Annotated[int, msgspec.Meta(ge=0)]
    within_sla: Annotated[int, msgspec.Meta(ge=0)]
    burn_rate: float | None


class FreshnessAlert(msgspec.Struct, frozen=True, kw_only=True):
    """What both freshness alert events say: the feature, its objective and the windows.

    Attributes:
        feature: The feature (also ``ce_subject`` and the record key).
        alert: The burn-rate alert's name in the registry (``fast``, ``slow``).
        owner: The feature's owner, whom the alert is for.
        sla_ms: The feature's freshness SLA (``max_staleness_ms``).
        objective: The share of serves within the SLA it must keep, and over what.
        burn_rate_threshold: The rate both windows reach for the alert to fire.
        windows: The long and the short window's figures.
        since: When the alert entered the state the event announces.
    """

    feature: str
    alert: str
    owner: str
    sla_ms: int
    objective: FreshnessObjective
    burn_rate_threshold: float
    windows: list[AlertWindow]
    since: datetime


class FreshnessBreached(FreshnessAlert, frozen=True, tag=FRESHNESS_BREACHED, tag_field="type"):
    """A feature burns its freshness error budget too fast: both windows reached the rate."""


class FreshnessRecovered(FreshnessAlert, frozen=True, tag=FRESHNESS_RECOVERED, tag_field="type"):
    """A breached alert cleared: a window's burn rate fell below the threshold.

    Attributes:
        breached_since: When the breach it ends began.
    """

    breached_since: datetime | None = None


FreshnessAlertEvent = FreshnessBreached | FreshnessRecovered
