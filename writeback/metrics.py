"""Prometheus instruments of the write-back side, in the process's default registry.

The relay observes them as it publishes; the gateway serves them at ``/metrics``
together with the outbox gauges it reads from PostgreSQL when scraped.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# From a few milliseconds (a woken relay) to minutes (an outage drained).
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
)

COMMIT_TO_PUBLISH = Histogram(
    "scoregate_outbox_commit_to_publish_seconds",
    "Time from an event's commit with its decision to its acknowledgement by Kafka.",
    buckets=_LATENCY_BUCKETS,
)
PUBLISH_DURATION = Histogram(
    "scoregate_relay_publish_duration_seconds",
    "One publish call of the relay: a batch handed to the producer until every"
    " acknowledgement or the publish timeout.",
    buckets=_LATENCY_BUCKETS,
)
EVENTS_PUBLISHED = Counter(
    "scoregate_relay_events_published",
    "Outcome events acknowledged by Kafka on their own topic.",
)
PUBLISH_FAILURES = Counter(
    "scoregate_relay_publish_failures",
    "Failed attempts to publish an outcome event, by kind of failure.",
    ["kind"],
)
EVENTS_DEAD_LETTERED = Counter(
    "scoregate_relay_events_dead_lettered",
    "Outcome events written to the dead-letter topic, by reason.",
    ["reason"],
)
