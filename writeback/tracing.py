"""W3C trace context across the outbox: captured at commit, continued at publish.

The request that commits an event leaves its ``traceparent`` in the outbox row; the
relay's publish span is that request's child, and the Kafka record carries the
publish span's ``traceparent`` header, so a consumer can continue the same trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

tracer = trace.get_tracer("scoregate.writeback")
_propagator = TraceContextTextMapPropagator()


def current_traceparent() -> str | None:
    """The current span's ``traceparent``, if there is a valid one."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def publish_span(topic: str, event_id: str, traceparent: str | None) -> Iterator[Span]:
    """A producer span for one event, child of the request that committed it.

    Args:
        topic: The topic the event is published to.
        event_id: The event's CloudEvents id.
        traceparent: The committing request's ``traceparent``; None starts a new trace.

    Yields:
        The span, current while the block runs.
    """
    parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    with tracer.start_as_current_span(
        f"publish {topic}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.message.id": event_id,
        },
    ) as span:
        yield span


def trace_headers(span: Span) -> list[tuple[str, bytes]]:
    """The Kafka headers that carry ``span``'s context to consumers."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return [(name, value.encode()) for name, value in carrier.items()]
