"""Served values and their staleness counted per feature, each series resolved once."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from contracts.features import FeatureValue
from gateway.observability import FeatureMetrics


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_each_value_is_counted_under_its_feature_status_and_sla() -> None:
    # Feature names of this test's own, so no other test's counts mix in.
    fresh, stale, fetched = (f"f_{uuid.uuid4().hex[:8]}" for _ in range(3))
    values = {
        fresh: FeatureValue(
            value=1, status="fresh", source="online_store", staleness_ms=500, max_staleness_ms=1000
        ),
        stale: FeatureValue(
            value=2, status="stale", source="online_store", staleness_ms=5000, max_staleness_ms=10
        ),
        fetched: FeatureValue(value=3.0, status="fallback", source="source:profile"),
        "amount": FeatureValue(value=4.0, status="request", source="request"),
    }
    metrics = FeatureMetrics()

    metrics.observe(values)
    metrics.observe(values)

    served = "scoregate_feature_values_served_total"
    assert sample(served, feature=fresh, status="fresh", within_sla="true") == 2
    assert sample(served, feature=stale, status="stale", within_sla="false") == 2
    assert sample(served, feature=fetched, status="fallback", within_sla="false") == 2
    assert sample(served, feature="amount", status="request", within_sla="false") == 0
    staleness = "scoregate_feature_staleness_seconds"
    assert sample(f"{staleness}_count", feature=fresh) == 2
    assert sample(f"{staleness}_sum", feature=stale) == 10.0
    assert sample(f"{staleness}_count", feature=fetched) == 0
    fallbacks = "scoregate_feature_fallbacks_total"
    assert sample(fallbacks, feature=fresh, source="online_store", outcome="fresh") == 0
    assert sample(fallbacks, feature=stale, source="online_store", outcome="stale") == 2
    assert sample(fallbacks, feature=fetched, source="source:profile", outcome="fetched") == 2
