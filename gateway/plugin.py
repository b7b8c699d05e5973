"""The gateway's lifecycle: one plugin opens every part, provides it, and closes it.

:class:`GatewayPlugin` is built from the settings and the registry. In the app's
lifespan it opens Redis, PostgreSQL, the HTTP sessions to sources and model servers,
the audit store and the background jobs (sealer, retention, outbox relay), and closes
them on shutdown, queued audit commits flushed first. Handlers take the parts they use
by name, one provider per part (``scorer``, ``audit``, ``reads``, ``masker``, ...);
none of them sees the plugin.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.plugins import InitPluginProtocol
from litestar.types import Scope

from gateway.admission import Admission
from gateway.auth import KeyRing
from gateway.breaker import DependencyBreaker
from gateway.features.assembler import FeatureAssembler
from gateway.features.online_store import OnlineStore
from gateway.features.push import FeaturePusher
from gateway.features.sources import SourceClient
from gateway.freshness.alerts import FreshnessAlertEvaluator
from gateway.freshness.reconciliation import EntitySampler, Reconciler, ReconciliationJob
from gateway.freshness.report import FreshnessReporter
from gateway.freshness.signals import BreakerBoard
from gateway.health import HealthChecks
from gateway.loop_lag import LoopLagMonitor
from gateway.masking import PiiMasker
from gateway.model_client import ModelClient
from gateway.registry import Registry, load_registry
from gateway.replay import Replayer
from gateway.scoring import Scorer, ScoringParts
from gateway.settings import GatewaySettings
from writeback import (
    AuditStore,
    DeadLetterQueue,
    DecisionReads,
    DecisionSealer,
    FreshnessAlertStore,
    FreshnessRollup,
    KafkaPublisher,
    OutboxRelay,
    ReconciliationStore,
    Retention,
    create_pool,
    reconnect_if_read_only,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class GatewayPlugin(InitPluginProtocol):
    """Every long-lived part of a gateway process, wired from one registry and settings."""

    def __init__(self, settings: GatewaySettings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry or load_registry(settings.registry_path)
        self.store = OnlineStore.from_url(
            settings.redis_url,
            settings.redis_prefix,
            self.registry.file.online_store,
            max_connections=settings.redis_max_connections,
        )
        self.publisher = KafkaPublisher(settings.writeback)
        self.keyring = KeyRing(settings.api_keys)
        self.pusher = FeaturePusher(self.registry, self.store)
        self.admission = Admission(settings.max_in_flight)
        self.masker = PiiMasker(settings.pii_key or _random_pii_key(), _pii_names(self.registry))
        self.sources: dict[str, SourceClient] = {}
        self.models: dict[str, ModelClient] = {}
        self.assembler: FeatureAssembler | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pool: asyncpg.Pool | None = None
        self._audit: AuditStore | None = None
        self._reads: DecisionReads | None = None
        self._dead_letters: DeadLetterQueue | None = None
        self._scorer: Scorer | None = None
        self._scoring: ScoringParts | None = None
        self._replayer: Replayer | None = None
        self._health: HealthChecks | None = None
        self._sealer: DecisionSealer | None = None
        self._loop_lag = LoopLagMonitor()
        self._retention: Retention | None = None
        self._relay: OutboxRelay | None = None
        self._board: BreakerBoard | None = None
        self._reconciliation: ReconciliationStore | None = None
        self._sampler: EntitySampler | None = None
        self._reconcile_job: ReconciliationJob | None = None
        self._rollup: FreshnessRollup | None = None
        self._alert_states: FreshnessAlertStore | None = None
        self._alerts: FreshnessAlertEvaluator | None = None
        self._freshness: FreshnessReporter | None = None

    @property
    def audit(self) -> AuditStore:
        """The audit store (open while the app runs)."""
        return _started(self._audit)

    @property
    def rollup(self) -> FreshnessRollup:
        """The served-staleness rollup (running while the app runs)."""
        return _started(self._rollup)

    @property
    def freshness(self) -> FreshnessReporter:
        """The freshness report of ``GET /freshness`` (open while the app runs)."""
        return _started(self._freshness)

    @property
    def reads(self) -> DecisionReads:
        """The access log, decision search and chain verification (open while the app runs)."""
        return _started(self._reads)

    @property
    def dead_letters(self) -> DeadLetterQueue:
        """The dead-letter queue (open while the app runs)."""
        return _started(self._dead_letters)

    @property
    def scorer(self) -> Scorer:
        """The scorer (open while the app runs)."""
        return _started(self._scorer)

    @property
    def scoring(self) -> ScoringParts:
        """What ``POST /score`` uses, as one part (open while the app runs)."""
        return _started(self._scoring)

    @property
    def replayer(self) -> Replayer:
        """The replayer of recorded decisions (open while the app runs)."""
        return _started(self._replayer)

    @property
    def health(self) -> HealthChecks:
        """The readiness checks (open while the app runs)."""
        return _started(self._health)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Provide each part by name, and register the lifespan and the read-only hook."""
        parts: dict[str, Callable[[], Any]] = {
            "registry": lambda: self.registry,
            "keyring": lambda: self.keyring,
            "admission": lambda: self.admission,
            "masker": lambda: self.masker,
            "pusher": lambda: self.pusher,
            "scorer": lambda: self.scorer,
            "scoring": lambda: self.scoring,
            "audit": lambda: self.audit,
            "reads": lambda: self.reads,
            "dead_letters": lambda: self.dead_letters,
            "replayer": lambda: self.replayer,
            "health": lambda: self.health,
            "reconciliation_runs": lambda: _started(self._reconciliation),
            "freshness": lambda: self.freshness,
            "alert_states": lambda: _started(self._alert_states),
        }
        for name, part in parts.items():
            app_config.dependencies[name] = Provide(part, sync_to_thread=False)
        app_config.lifespan.append(self.lifespan)
        app_config.after_exception.append(self.after_exception)
        return app_config

    async def after_exception(self, exc: Exception, _: Scope) -> None:
        """Drop the pool's connections when PostgreSQL refused a write as read-only.

        A demoted primary stays reachable but refuses writes: the pool's sessions
        (opened there, or under ``default_transaction_read_only``) would refuse them
        for as long as they live. New connections reach whatever is primary by then,
        so the gateway heals by itself once a writable primary is back.
        """
        if self._pool is not None:
            await reconnect_if_read_only(self._pool, exc)

    @asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        """Open every part before serving, close them after."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        """Connect to everything the gateway needs and start its background jobs."""
        # Idle connections are let go before the servers drop them: uvicorn (MLServer,
        # the sample servers) closes an idle keep-alive connection after 5 s, and a
        # request sent on one it just closed fails as a disconnect, counted against it.
        connector = aiohttp.TCPConnector(
            limit=256, limit_per_host=128, ttl_dns_cache=300, keepalive_timeout=4.0
        )
        self._session = session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        )
        for name, source in self.registry.sources.items():
            self.sources[name] = SourceClient(source, session)
        for name, plan in self.registry.plans.items():
            vector = [(f.name, f.dtype) for f in plan.features]
            vector += [(c.name, c.dtype) for c in plan.model.context]
            self.models[name] = ModelClient(plan.model, vector, session)
        self.assembler = FeatureAssembler(self.registry, self.store, self.sources)
        await self.store.open()
        config = self.settings.writeback
        self._pool = pool = await create_pool(config)
        self._audit = audit = AuditStore(pool, config)
        await audit.start()
        self._dead_letters = DeadLetterQueue(pool, config)
        self._retention = Retention(pool, config)
        await self._retention.start()
        self._scorer = scorer = Scorer(self.registry, self.assembler, self.models, audit)
        self._scoring = ScoringParts(scorer, self.admission, self.masker)
        self._replayer = Replayer(self.registry, self.models)
        self._reads = DecisionReads(pool, config.verify_pace)
        await self._start_reconciliation(pool)
        self._health = HealthChecks(
            audit=audit,
            store=self.store,
            publisher=self.publisher,
            sources=self.sources,
            models=self.models,
            timeout_s=self.settings.health_timeout_s,
        )
        self._sealer = DecisionSealer(pool)
        await self._sealer.start()
        self._rollup = FreshnessRollup(pool, config.freshness_resolution_s)
        await self._rollup.start()
        self._alert_states = FreshnessAlertStore(pool, config)
        if self.settings.alert_interval_s > 0:
            self._alerts = FreshnessAlertEvaluator(
                self.registry,
                self._alert_states,
                self._rollup,
                self.settings.alert_interval_s,
                pool,
            )
            await self._alerts.start()
        self._freshness = FreshnessReporter.from_url(
            self.registry,
            pool,
            self.settings.redis_url,
            self.settings.redis_prefix,
            config.freshness_resolution_s,
        )
        await self._loop_lag.start()
        self._board = BreakerBoard.from_url(
            self.settings.redis_url, self.settings.redis_prefix, self._breakers
        )
        await self._board.start()
        if self.settings.run_relay:
            self._relay = OutboxRelay(pool, self.publisher, config)
            await self._relay.start()

    async def stop(self) -> None:
        """Stop the background jobs and close connections; queued commits are flushed."""
        await self._stop_reconciliation()
        if self._board is not None:
            await self._board.stop()
            self._board = None
        await self._loop_lag.stop()
        if self._sealer is not None:
            await self._sealer.stop()
        if self._alerts is not None:
            await self._alerts.stop()
            self._alerts = None
        if self._rollup is not None:
            await self._rollup.stop()
        if self._freshness is not None:
            await self._freshness.close()
            self._freshness = None
        if self._retention is not None:
            await self._retention.stop()
        if self._relay is not None:
            await self._relay.stop()
        if self.assembler is not None:
            await self.assembler.drain()
        if self._audit is not None:
            await self._audit.close()
        if self._pool is not None:
            await self._pool.close()
        await self.publisher.stop()
        await self.store.close()
        if self._session is not None:
            await self._session.close()

    async def _start_reconciliation(self, pool: asyncpg.Pool) -> None:
        """Open the reconciliation store and start its job, unless its interval is 0."""
        settings = self.settings
        self._reconciliation = runs = ReconciliationStore(pool, settings.writeback.database_url)
        if settings.reconcile_interval_s <= 0:
            return
        client = aioredis.Redis.from_url(settings.redis_url)
        self._sampler = sampler = EntitySampler(client, self.store)
        reconciler = Reconciler(self.registry, self.store, self.sources, sampler, runs)
        self._reconcile_job = ReconciliationJob(
            reconciler,
            runs,
            interval_s=settings.reconcile_interval_s,
            sample=settings.reconcile_sample,
            repair=settings.reconcile_repair,
            retention_days=settings.reconcile_retention_days,
        )
        await self._reconcile_job.start()

    async def _stop_reconciliation(self) -> None:
        if self._reconcile_job is not None:
            await self._reconcile_job.stop()
            self._reconcile_job = None
        if self._sampler is not None:
            await self._sampler.close()
            self._sampler = None

    def _breakers(self) -> Iterator[DependencyBreaker]:
        yield self.store.breaker
        for source in self.sources.values():
            yield source.breaker
        for model in self.models.values():
            yield model.breaker


def _started(part: T | None) -> T:
    if part is None:
        raise RuntimeError("the gateway is not started")
    return part


def _random_pii_key() -> bytes:
    log.warning("SCOREGATE_PII_KEY is not set: PII masks are not comparable across processes")
    return secrets.token_bytes(32)


def _pii_names(registry: Registry) -> frozenset[str]:
    names = {f.name for f in registry.features.values() if f.classification == "pii"}
    for model in registry.models.values():
        names.update(c.name for c in model.context if c.classification == "pii")
    return frozenset(names)
