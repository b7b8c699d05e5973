"""Traces end to end (in-memory exporter) and /metrics parsed as Prometheus text."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from scoregate_dev.broker import LocalBroker
from tests.support.keys import bearer
from tests.support.scoring import body, seed
from tests.support.services import consume

pytestmark = pytest.mark.services

Client = httpx.AsyncClient
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="session")
def _provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(provider)
    return provider


@pytest.fixture
def spans(_provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def of_trace(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.context is not None and f"{s.context.trace_id:032x}" == TRACE_ID
    ]


async def test_one_request_is_one_trace_from_caller_to_kafka(
    client: Client, spans: InMemorySpanExporter, broker: LocalBroker, topic: str
) -> None:
    # The merchant is not in the online store: its source is called too.
    await seed(client, "c-t1", "m-elsewhere", timedelta(seconds=1))
    traceparent = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
    response = await client.post(
        "/score",
        json=body("c-t1", "m-t1"),
        headers={**bearer("scorer"), "traceparent": traceparent},
    )
    assert response.status_code == 200, response.text
    decision_id = response.json()["decision_id"]

    records = await consume(broker.bootstrap, topic, expected=1)
    headers = dict(records[0].headers)
    assert headers["traceparent"].decode().split("-")[1] == TRACE_ID

    record = (await client.get(f"/decisions/{decision_id}")).json()
    assert record["trace_id"] == TRACE_ID

    found = of_trace(spans)
    by_name = {s.name: s for s in found}
    server = by_name["POST /score"]
    assert server.kind == trace.SpanKind.SERVER
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == CALLER_SPAN
    for stage in ("auth", "decode", "online_store read", "model fraud infer", "audit commit"):
        assert stage in by_name, sorted(by_name)
        parent = by_name[stage].parent
        assert parent is not None
        assert parent.span_id == server.context.span_id, stage
    source = by_name["source merchant_risk"]
    assert source.kind == trace.SpanKind.CLIENT
    assert source.parent is not None
    assert source.parent.span_id == server.context.span_id
    assert by_name["model fraud infer"].kind == trace.SpanKind.CLIENT

    publish = by_name[f"publish {topic}"]
    assert publish.kind == trace.SpanKind.PRODUCER
    assert publish.parent is not None
    assert publish.parent.span_id == by_name["audit commit"].context.span_id
    # The Kafka record carries the publish span's context for consumers to continue.
    assert headers["traceparent"].decode().split("-")[2] == f"{publish.context.span_id:016x}"


async def test_metrics_parse_as_prometheus_text(client: Client) -> None:
    await seed(client, "c-t2", "m-t2", timedelta(hours=2))
    assert (await client.post("/score", json=body("c-t2", "m-t2"))).status_code == 200
    text = (await client.get("/metrics", headers={"Authorization": ""})).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in (
        "scoregate_http_server_request_duration_seconds",
        "scoregate_feature_staleness_seconds",
        "scoregate_feature_values_served",
        "scoregate_feature_fallbacks",
        "scoregate_circuit_breaker_state",
        "scoregate_outbox_lag_seconds",
        "scoregate_dead_letter_queue_depth",
    ):
        assert name in families, sorted(families)
    latency = [
        s
        for s in families["scoregate_http_server_request_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["route"] == "/score"
    ]
    assert any(s.labels["model"] == "fraud" and s.value >= 1 for s in latency)
    fallbacks = [
        s
        for s in families["scoregate_feature_fallbacks"].samples
        if s.labels.get("feature") == "txn_count_30m"
    ]
    assert any(s.labels["outcome"] == "fetched" and s.value >= 1 for s in fallbacks)
    breakers = {
        s.labels["dependency"]: s.value for s in families["scoregate_circuit_breaker_state"].samples
    }
    assert breakers["source:txn_stats"] == 0


def _latency_series(text: str) -> set[tuple[tuple[str, str], ...]]:
    families = {family.name: family for family in text_string_to_metric_families(text)}
    return {
        tuple(sorted(s.labels.items()))
        for s in families["scoregate_http_server_request_duration_seconds"].samples
        if s.name.endswith("_count")
    }


async def test_unknown_model_names_and_methods_add_no_metric_series(client: Client) -> None:
    async def unknown(number: int) -> None:
        response = await client.post("/score", json={**body("c-t3", "m-t3"), "model": f"m{number}"})
        assert response.status_code == 400
        assert response.json()["field"] == "model"

    for number in range(3):  # every label combination these requests can reach exists now
        await unknown(number)
    await client.request("BREW", "/score")
    await client.request("BREW2", "/score")
    before = _latency_series((await client.get("/metrics", headers={"Authorization": ""})).text)
    for start in range(3, 1000, 100):
        for number in range(start, min(start + 100, 1000)):
            await unknown(number)
    for number in range(20):
        await client.request(f"X{number}", "/score")
    after = _latency_series((await client.get("/metrics", headers={"Authorization": ""})).text)
    assert after == before
    assert all(dict(labels)["model"] in {"", "fraud", "unknown"} for labels in after)
