"""``/metrics``: Prometheus text format, from the process's default registry.

The write-back instruments (publish latency, commit-to-publish delay, published,
failed and dead-lettered events) are observed by the relay as it works
(:mod:`writeback.metrics`); the outbox gauges are read from PostgreSQL at each
scrape, so every gateway process reports the same outbox whichever relay drains it.
"""

from __future__ import annotations

import logging
import math

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest

from writeback import AuditUnavailable, DeadLetterQueue

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of the Prometheus text exposition format."""

OUTBOX_LAG = Gauge(
    "scoregate_outbox_lag_seconds",
    "Age of the oldest outcome event not yet delivered (0 when none waits); NaN when"
    " PostgreSQL cannot be read.",
)
OUTBOX_PENDING = Gauge(
    "scoregate_outbox_pending_events",
    "Outcome events not yet delivered, including those held behind a dead letter.",
)
DEAD_LETTER_DEPTH = Gauge(
    "scoregate_dead_letter_queue_depth",
    "Outcome events in the dead-letter queue, waiting for a redrive.",
)

RECONCILIATION_RUNS = Counter(
    "scoregate_reconciliation_runs_total",
    "Reconciliation runs this process made, by feature and why the run ended early"
    ' ("none" when it checked its whole sample).',
    ["feature", "stopped_reason"],
)
RECONCILIATION_FINDINGS = Counter(
    "scoregate_reconciliation_findings_total",
    "Entities reconciliation checked, by feature and what it found (match,"
    " newer_at_source, mismatch, missing_in_store, missing_at_source).",
    ["feature", "kind"],
)
RECONCILIATION_REPAIRS = Counter(
    "scoregate_reconciliation_repairs_total",
    "Source values reconciliation wrote into the online store, by feature.",
    ["feature"],
)


async def render(dead_letters: DeadLetterQueue) -> bytes:
    """Read the outbox gauges, then render every metric of this process.

    Args:
        dead_letters: Where the outbox figures come from.

    Returns:
        The Prometheus text exposition.
    """
    try:
        stats = await dead_letters.stats()
    except AuditUnavailable as exc:
        log.warning("outbox metrics unavailable: %r", exc)
        for gauge in (OUTBOX_LAG, OUTBOX_PENDING, DEAD_LETTER_DEPTH):
            gauge.set(math.nan)
    else:
        OUTBOX_LAG.set(stats.oldest_pending_s)
        OUTBOX_PENDING.set(stats.pending)
        DEAD_LETTER_DEPTH.set(stats.dead_lettered)
    return generate_latest(REGISTRY)
