"""Freshness as an SLA: what was served how stale, what ingest did, alerts and reconciliation.

- :mod:`gateway.freshness.histogram`: the staleness buckets every part counts in;
- :mod:`gateway.freshness.signals`: what ingest workers and gateways share in Redis
  (ingest lag, last event times, consumer lag, schema changes, breaker states);
- :mod:`gateway.freshness.report`: ``GET /freshness``, from the audit store's rollup of
  served staleness and those signals;
- :mod:`gateway.freshness.alerts`: burn-rate alerts, raised once across processes;
- :mod:`gateway.freshness.reconciliation`: the online store checked against sources.
"""
