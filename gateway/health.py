"""Readiness: every dependency asked at once, and every breaker's state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import msgspec

from gateway.features.online_store import OnlineStore
from gateway.features.sources import SourceClient
from gateway.model_client import ModelClient
from writeback import AuditStore, KafkaPublisher


class Check(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One dependency's answer to the readiness probe."""

    ok: bool
    latency_ms: float
    error: str | None = None


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """``/health/ready``: every dependency's check and every breaker's state."""

    ready: bool
    checks: dict[str, Check]
    breakers: dict[str, str]


class HealthChecks:
    """Asks PostgreSQL, Redis, Kafka and every model server whether they answer."""

    def __init__(
        self,
        *,
        audit: AuditStore,
        store: OnlineStore,
        publisher: KafkaPublisher,
        sources: Mapping[str, SourceClient],
        models: Mapping[str, ModelClient],
        timeout_s: float,
    ) -> None:
        self._audit = audit
        self._store = store
        self._publisher = publisher
        self._sources = sources
        self._models = models
        self._timeout_s = timeout_s

    def breakers(self) -> dict[str, str]:
        """The state of every breaker, by dependency."""
        states = {self._store.breaker.name: self._store.breaker.state}
        for client in self._sources.values():
            states[client.breaker.name] = client.breaker.state
        for model in self._models.values():
            states[model.breaker.name] = model.breaker.state
        return states

    async def readiness(self) -> Readiness:
        """Ask every dependency at once, each within the health timeout."""
        timeout = self._timeout_s
        probes: dict[str, Awaitable[Any]] = {
            "postgres": self._audit.ping(),
            "redis": self._store.ping(),
            "kafka": self._kafka_ready(timeout),
        }
        for name, model in self._models.items():
            probes[f"model:{name}"] = _model_ready(model, timeout)
        names = list(probes)
        results = await asyncio.gather(*(_timed(probes[n], timeout) for n in names))
        checks = dict(zip(names, results, strict=True))
        return Readiness(
            ready=all(c.ok for c in checks.values()), checks=checks, breakers=self.breakers()
        )

    async def _kafka_ready(self, limit_s: float) -> None:
        if not await self._publisher.ready(limit_s):
            raise ConnectionError("broker did not answer")


async def _model_ready(model: ModelClient, limit_s: float) -> None:
    if not await model.ready(limit_s):
        raise ConnectionError(f"{model.model.endpoint} is not ready")


async def _timed(probe: Awaitable[Any], limit_s: float) -> Check:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            await probe
    except Exception as exc:  # any failure of a probe is a not-ready answer
        elapsed = (time.perf_counter() - started) * 1000
        return Check(ok=False, latency_ms=round(elapsed, 2), error=str(exc) or type(exc).__name__)
    return Check(ok=True, latency_ms=round((time.perf_counter() - started) * 1000, 2))
