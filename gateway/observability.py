"""Traces and serving metrics of the online path.

Traces: a span per request (``SERVER``) and per stage (auth, decode, online store
read, each source fetch, model call, audit commit), with W3C trace context taken from
the caller and passed on to sources, the model server and, through the outbox, the
Kafka headers of each event. Spans go to OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``..._TRACES_ENDPOINT``) is set; otherwise the tracer is OpenTelemetry's no-op one,
which still carries the caller's trace id through, at the cost of a few object
creations per request.

Metrics (Prometheus, via prometheus_client): request latency per route and model,
served staleness per feature and whether it was within its SLA, fallbacks and policy
outcomes per feature and source, breaker states.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import ProxyTracerProvider, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter, Gauge, Histogram

from contracts.features import FeatureValue

tracer = trace.get_tracer("scoregate")
"""The tracer of every scoregate span (a proxy: it follows the global provider)."""

_propagator = TraceContextTextMapPropagator()

REQUEST_SECONDS = Histogram(
    "scoregate_http_server_request_duration_seconds",
    "Time to answer an HTTP request, by route, method, status class and model.",
    ["route", "method", "status_class", "model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STALENESS_SECONDS = Histogram(
    "scoregate_feature_staleness_seconds",
    "Age of served feature values (scoring time minus event time), by feature.",
    ["feature"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600, 86400, 604800),
)
SERVED = Counter(
    "scoregate_feature_values_served_total",
    "Feature values served, by feature, status and whether within the freshness SLA;"
    ' share within SLA = sum(within_sla="true") / sum.',
    ["feature", "status", "within_sla"],
)
FALLBACKS = Counter(
    "scoregate_feature_fallbacks_total",
    "Features not served fresh from the online store, by feature, source and outcome"
    " (fetched from the source, or the policy: stale, default).",
    ["feature", "source", "outcome"],
)
SCHEMA_CHANGES = Counter(
    "scoregate_schema_changes",
    "Schema changes seen at the boundary: a schema version not accepted, a mapped column"
    " missing or of another type (the record is dead-lettered), an unmapped field"
    " (compatible; counted once per field), or a source API's answer without a valid"
    " value of a feature (source = source:<name>; the feature's policy applies).",
    ["source", "feature", "kind"],
)
BREAKER_STATE = Gauge(
    "scoregate_circuit_breaker_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
    ["dependency"],
)
_BREAKER_LEVELS = {"closed": 0, "half-open": 1, "open": 2}


def tracer_provider_from_env(env: Mapping[str, str] | None = None) -> Any:
    """An SDK tracer provider exporting over OTLP/HTTP, if an endpoint is configured."""
    env = os.environ if env is None else env
    if not (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "scoregate")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


_recording = False


def refresh_tracing() -> bool:
    """Note whether a real tracer provider is installed (OTLP, or a test's).

    Asked once per app, not per span: ``get_tracer_provider()`` reads the process
    environment on every call until a provider is set.
    """
    global _recording
    _recording = not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
    return _recording


def tracing_enabled() -> bool:
    """True when spans are recorded (as of the last :func:`refresh_tracing`)."""
    return _recording


def stage(
    name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: dict[str, str] | None = None
) -> AbstractContextManager[object]:
    """A span for one stage of a request, or nothing at all when nobody records spans."""
    if not tracing_enabled():
        return nullcontext()
    return tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current span's ``traceparent`` (and ``tracestate``) to ``headers``."""
    _propagator.inject(headers)
    return headers


def current_trace_id() -> str | None:
    """The current trace's id as 32 hex digits, if there is one."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def record_stage(name: str, start_ns: int, end_ns: int | None = None) -> None:
    """A span for a stage measured before its span could be opened (auth, decode)."""
    if not tracing_enabled():
        return
    span = tracer.start_span(name, start_time=start_ns)
    span.end(end_time=end_ns or time.time_ns())


class FeatureMetrics:
    """Counts served values and their staleness, per feature.

    ``labels(...)`` resolves its child on every call (a lock, a tuple, a dict); each
    child is resolved here once and kept. The label values are feature names, statuses
    and sources, all bounded by the registry, so the children kept are too.
    """

    def __init__(self) -> None:
        self._served: dict[tuple[str, str, bool], Counter] = {}
        self._staleness: dict[str, Histogram] = {}
        self._fallbacks: dict[tuple[str, str, str], Counter] = {}

    def observe(self, values: Mapping[str, FeatureValue]) -> None:
        """Count the served values (request-time context is not served) and their staleness."""
        for name, value in values.items():
            status = value.status
            if status == "request":
                continue
            staleness = value.staleness_ms
            within = (
                staleness is not None
                and value.max_staleness_ms is not None
                and staleness <= value.max_staleness_ms
            )
            served = self._served.get((name, status, within))
            if served is None:
                served = SERVED.labels(name, status, "true" if within else "false")
                self._served[(name, status, within)] = served
            served.inc()
            if staleness is not None:
                histogram = self._staleness.get(name)
                if histogram is None:
                    histogram = self._staleness[name] = STALENESS_SECONDS.labels(name)
                histogram.observe(staleness / 1000)
            if status != "fresh":
                key = (name, value.source, "fetched" if status == "fallback" else status)
                fallbacks = self._fallbacks.get(key)
                if fallbacks is None:
                    fallbacks = self._fallbacks[key] = FALLBACKS.labels(*key)
                fallbacks.inc()


def observe_breakers(states: Iterable[tuple[str, str]]) -> None:
    """Set the breaker gauge from each dependency's state."""
    for dependency, state in states:
        BREAKER_STATE.labels(dependency).set(_BREAKER_LEVELS.get(state, 2))


class TracingMiddleware:
    """Opens the request's server span (continuing the caller's trace) and times it.

    Health probes and ``/metrics`` are neither traced nor timed.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Per route handler its route template, and per label set its histogram child:
        # both bounded (the app's routes, fixed methods and status classes, the
        # registry's models), so resolved once each rather than on every request.
        self._routes: dict[object, str] = {}
        self._timers: dict[tuple[str, str, int, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Trace and time one HTTP request; pass anything else through."""
        path = scope.get("path", "")
        if scope["type"] != ScopeType.HTTP or path.startswith(("/health", "/metrics")):
            await self.app(scope, receive, send)
            return
        carrier = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope["headers"]
            if key in (b"traceparent", b"tracestate")
        }
        parent = _propagator.extract(carrier) if carrier else None
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = str(scope.get("method", ""))
        started = time.perf_counter()
        if tracing_enabled():
            with tracer.start_as_current_span(
                f"{method} {path}", context=parent, kind=SpanKind.SERVER
            ) as span:
                await self.app(scope, receive, send_and_note)
                route = self._route_of(scope)
                span.update_name(f"{method} {route}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
        else:
            # Nobody records spans: only carry the caller's trace context through.
            token = otel_context.attach(parent) if parent is not None else None
            try:
                await self.app(scope, receive, send_and_note)
            finally:
                if token is not None:
                    otel_context.detach(token)
            route = self._route_of(scope)
        model = scope.get("state", {}).get("scoregate.model", "")
        label = method if method in _METHODS else "other"
        key = (route, label, status // 100, model)
        timer = self._timers.get(key)
        if timer is None:
            timer = REQUEST_SECONDS.labels(route, label, f"{status // 100}xx", model)
            self._timers[key] = timer
        timer.observe(time.perf_counter() - started)

    def _route_of(self, scope: Scope) -> str:
        handler = scope.get("route_handler")
        if handler is None:
            return "unmatched"
        route = self._routes.get(handler)
        if route is None:
            route = self._routes[handler] = _route_of(handler)
        return route


# Label values come from fixed sets (methods, route templates, registry models), never
# from what a caller sends, so the number of series stays bounded.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _route_of(handler: object) -> str:
    paths = getattr(handler, "paths", None)
    if paths:
        return str(sorted(paths)[0]).replace(":str}", "}")
    return "unmatched"
