"""The dead-letter queue as operators see it: ``GET /dlq`` and ``POST /dlq/{id}/redrive``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from contracts.decisions import DeliveryStatus

DeadLetterReason = Literal["non_retriable", "attempts_exhausted"]
"""Why an event was dead-lettered: an error no retry can fix (too large, not
serialisable, not authorised), or too many failures of a kind a retry might fix."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An outcome event that went to the dead-letter topic instead of its own.

    Attributes:
        event_id: The CloudEvents id (``ce_id``); a redrive keeps it.
        decision_id: The decision the event is about.
        type: The event type (``scoregate.decision.made``, ...).
        topic: The outcome topic it was meant for.
        key: Its record key (the subject's id).
        status: ``dead_lettered``, or ``pending`` once redriven and not yet delivered.
        reason: Why it was dead-lettered.
        error_class: The exception class of the last failure.
        error: The last failure's message.
        attempts: Publish attempts to the outcome topic so far.
        first_failed_at: When its first failure happened.
        last_failed_at: When its last failure happened.
        created_at: When it was committed.
        dead_lettered_at: When the dead-letter topic took it.
        dlq_topic: The dead-letter topic.
        dlq_partition: Where the dead letter landed.
        dlq_offset: Where the dead letter landed.
        redrives: How often it was redriven before.
        held: Later events of the same key waiting behind it (order per subject).
    """

    event_id: str
    decision_id: str
    type: str
    topic: str
    key: str
    status: DeliveryStatus
    reason: DeadLetterReason | None
    error_class: str | None
    error: str | None
    attempts: int
    first_failed_at: datetime | None
    last_failed_at: datetime | None
    created_at: datetime
    dead_lettered_at: datetime | None
    dlq_topic: str | None
    dlq_partition: int | None
    dlq_offset: int | None
    redrives: int
    held: int


class DeadLetterPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of ``GET /dlq``, oldest first.

    Attributes:
        items: The dead letters on this page.
        next_cursor: Pass as ``cursor`` for the next page; None on the last one.
    """

    items: list[DeadLetter]
    next_cursor: str | None = None
