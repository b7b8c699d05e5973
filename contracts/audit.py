"""What auditors read besides decision records.

Search pages, the access log, replays and the verdict of the tamper-evidence check.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from contracts.decisions import Subject
from contracts.scoring import ModelRef

ReadVia = Literal["api", "ui", "replay"]


class AccessEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One read of a decision's context: who, when, how and why."""

    decision_id: str
    key_id: str
    read_at: datetime
    via: ReadVia
    purpose: str | None = None


class AccessLog(msgspec.Struct, frozen=True, kw_only=True):
    """Every recorded read of one decision, oldest first."""

    decision_id: str
    entries: list[AccessEntry]


class DecisionSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A decision as a search lists it (its context is read, and logged, by id)."""

    decision_id: str
    request_id: str
    model: ModelRef
    subject: Subject
    decision: str | None
    degraded: bool
    status: Literal["made", "rolled_back"]
    decided_at: datetime


class DecisionPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a search, newest first.

    Attributes:
        items: The decisions on this page.
        next_cursor: Pass as ``cursor`` for the next page; None on the last one.
    """

    items: list[DecisionSummary]
    next_cursor: str | None = None


class ReplayRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /decisions/{id}/replay``: score the recorded vector again."""

    model_version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class ReplayOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a model made of a feature vector."""

    model: ModelRef
    outputs: dict[str, Any]
    decision: str | None


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    """The recorded outcome beside the replayed one.

    Attributes:
        decision_id: The decision that was replayed.
        original: The outcome as recorded with the decision.
        replayed: The recorded vector scored again, by the requested model version or
            else the recorded one.
        match: Whether the labels agree and the outputs are equal (numbers to a
            relative 1e-9).
    """

    decision_id: str
    original: ReplayOutcome
    replayed: ReplayOutcome
    match: bool


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """The result of walking the hash chain of decision records.

    Attributes:
        ok: Whether every seal checked holds.
        checked: How many seals were found sound.
        unsealed: Records committed too recently to be sealed yet (not checked).
        first_mismatch: The first record whose content or link does not match its
            seal (or a sealed record that is gone); None when the chain holds.
        reason: What is wrong at ``first_mismatch`` (the seal does not link, the
            record is missing, or it does not match its seal).
        chain_head: The hash (hex) the chain holds up to: its last seal when it holds,
            else the seal before ``first_mismatch``.
    """

    ok: bool
    checked: int
    unsealed: int
    first_mismatch: str | None = None
    reason: str | None = None
    chain_head: str | None = None
