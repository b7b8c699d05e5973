"""What the auditor's pages show of a decision: rows, bars and formatted values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import msgspec

from contracts.decisions import DecisionRecord, FeatureCheck
from contracts.features import FeatureValue, Lineage


@dataclass(frozen=True, slots=True)
class StalenessBar:
    """A feature's age against its freshness SLA, as the page draws it."""

    percent: float
    """Width of the bar: the share of the SLA used, at most 100."""
    text: str
    """For example ``12.3 s of 60 s``."""
    over: bool
    """The value is older than its SLA allows."""


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One feature of a decision as the page shows it."""

    name: str
    value: str
    masked: bool
    status: str
    source: str
    staleness: StalenessBar | None
    lineage_id: str | None
    lineage: Lineage | None
    problem: str | None
    check: FeatureCheck | None = None
    """What reconciliation later found of the value served, if a run covered it."""


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One step of the write-back timeline (or the rollback)."""

    at: datetime
    stage: Literal["committed", "published", "dead_lettered", "redriven", "rolled_back"]
    event_type: str
    event_id: str
    detail: str


def format_duration(ms: float) -> str:
    """A duration in the unit a person reads best: ``830 ms``, ``12.3 s``, ``5 min``."""
    for limit, unit, size in (
        (1_000, "ms", 1),
        (120_000, "s", 1_000),
        (7_200_000, "min", 60_000),
        (172_800_000, "h", 3_600_000),
    ):
        if ms < limit:
            return f"{_number(ms / size)} {unit}"
    return f"{_number(ms / 86_400_000)} d"


def _number(amount: float) -> str:
    text = f"{amount:.1f}" if amount < 100 else f"{amount:.0f}"
    return text.removesuffix(".0")


def format_time(moment: datetime | None) -> str:
    """A timestamp in UTC to the millisecond, or a dash."""
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def format_value(value: object) -> str:
    """A feature or output value as JSON shows it (``true``, ``0.25``, ``"c-1"``)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def staleness_bar(feature: FeatureValue) -> StalenessBar | None:
    """The bar of a feature's staleness against its SLA, if it has both."""
    if feature.staleness_ms is None or not feature.max_staleness_ms:
        return None
    share = feature.staleness_ms / feature.max_staleness_ms
    return StalenessBar(
        percent=round(min(1.0, max(0.0, share)) * 100, 1),
        text=f"{format_duration(feature.staleness_ms)} of "
        f"{format_duration(feature.max_staleness_ms)}",
        over=share > 1,
    )


def feature_rows(record: DecisionRecord) -> list[FeatureRow]:
    """Every feature of the decision, in the model's vector order."""
    return [
        FeatureRow(
            name=name,
            value=format_value(feature.value),
            masked=isinstance(feature.value, str) and feature.value.startswith("***"),
            status=feature.status,
            source=feature.source,
            staleness=staleness_bar(feature),
            lineage_id=feature.lineage_id,
            lineage=record.lineage.get(name),
            problem=record.problems.get(name),
            check=record.reconciliation.get(name),
        )
        for name, feature in record.features.items()
    ]


def timeline_rows(record: DecisionRecord) -> list[TimelineRow]:
    """The write-back history of the decision's events and its rollback, oldest first."""
    rows = []
    for entry in record.timeline:
        if entry.stage == "committed":
            detail = f"queued for {entry.topic} with the decision"
        elif entry.stage == "published":
            detail = f"{entry.topic}, partition {entry.partition}, offset {entry.offset}"
            detail += f" (attempt {entry.attempts})" if entry.attempts else ""
        elif entry.stage == "dead_lettered":
            detail = f"to {entry.topic}, partition {entry.partition}, offset {entry.offset}"
            detail += f" after: {entry.error}" if entry.error else ""
        else:
            detail = f"by {entry.actor or 'an operator'}"
        rows.append(TimelineRow(entry.at, entry.stage, entry.type, entry.event_id, detail))
    if record.rollback is not None:
        rollback = record.rollback
        rows.append(
            TimelineRow(
                rollback.rolled_back_at,
                "rolled_back",
                "scoregate.decision.rolled_back",
                rollback.event_id,
                f"by {rollback.rolled_back_by}: {rollback.reason}",
            )
        )
    return sorted(rows, key=lambda row: row.at)
