"""The Litestar application: one :class:`Gateway` plugin owns every connection.

The plugin opens Redis, PostgreSQL, HTTP sessions and the outbox relay in the app's
lifespan, provides itself to handlers as the ``gateway`` dependency, and closes
everything on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import types
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Union, get_args, get_origin

import aiohttp
import asyncpg
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.config.app import AppConfig
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.exceptions import ImproperlyConfiguredException as ConfigurationError
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody
from litestar.plugins import InitPluginProtocol
from litestar.types import Empty, Scope
from litestar.utils.scope.state import ScopeState
from opentelemetry import trace

from contracts.decisions import DecisionRecord, RollbackRequest, RollbackState
from contracts.features import PushRequest, PushResponse
from contracts.registry import RegistryFile
from contracts.scoring import ErrorBody, ScoreRequest, ScoreResponse
from gateway.auditing import (
    PurposeHeader,
    as_answered,
    audit_handlers,
    read_decision,
    store_error,
    with_retry_after,
)
from gateway.auth import AUTH_DONE, ApiKeyAuthentication, KeyRing, Principal, requires
from gateway.errors import GatewayError, NotFound, Unavailable
from gateway.features.assembler import FeatureAssembler
from gateway.features.online_store import OnlineStore
from gateway.features.push import FeaturePusher
from gateway.features.sources import SourceClient
from gateway.masking import PiiMasker
from gateway.model_client import ModelClient
from gateway.observability import (
    TracingMiddleware,
    record_stage,
    refresh_tracing,
    tracer_provider_from_env,
)
from gateway.openapi import error_responses, scalar_unions_as_type_lists
from gateway.operations import operation_handlers
from gateway.registry import Registry, load_registry
from gateway.replay import Replayer
from gateway.scoring import Scorer
from gateway.settings import GatewaySettings
from gateway.ui import ui_handlers, ui_template_config
from writeback.audit_store import AuditStore, AuditUnavailable
from writeback.dead_letters import DeadLetterQueue
from writeback.decision_reads import DecisionReads
from writeback.kafka import KafkaPublisher
from writeback.pool import create_pool, reconnect_if_read_only
from writeback.relay import OutboxRelay
from writeback.retention import Retention
from writeback.seals import DecisionSealer

log = logging.getLogger(__name__)


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


class Gateway(InitPluginProtocol):
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
        self._session: aiohttp.ClientSession | None = None
        self._pool: asyncpg.Pool | None = None
        self._reads: DecisionReads | None = None
        self._sealer: DecisionSealer | None = None
        self._audit: AuditStore | None = None
        self._relay: OutboxRelay | None = None
        self._dead_letters: DeadLetterQueue | None = None
        self._retention: Retention | None = None
        self._scorer: Scorer | None = None
        self.sources: dict[str, SourceClient] = {}
        self.models: dict[str, ModelClient] = {}
        self.pusher = FeaturePusher(self.registry, self.store)
        self.admission = Admission(settings.max_in_flight)
        self.masker = PiiMasker(settings.pii_key or _random_pii_key(), _pii_names(self.registry))
        self.assembler: FeatureAssembler | None = None

    @property
    def audit(self) -> AuditStore:
        """The audit store (open while the app runs)."""
        if self._audit is None:
            raise RuntimeError("the gateway is not started")
        return self._audit

    @property
    def dead_letters(self) -> DeadLetterQueue:
        """The dead-letter queue (open while the app runs)."""
        if self._dead_letters is None:
            raise RuntimeError("the gateway is not started")
        return self._dead_letters

    @property
    def pool(self) -> asyncpg.Pool:
        """The PostgreSQL pool (open while the app runs)."""
        if self._pool is None:
            raise RuntimeError("the gateway is not started")
        return self._pool

    @property
    def reads(self) -> DecisionReads:
        """The access log and decision search (open while the app runs)."""
        if self._reads is None:
            raise RuntimeError("the gateway is not started")
        return self._reads

    @property
    def scorer(self) -> Scorer:
        """The scorer (open while the app runs)."""
        if self._scorer is None:
            raise RuntimeError("the gateway is not started")
        return self._scorer

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Register the gateway as a dependency and its lifespan."""
        app_config.dependencies["gateway"] = Provide(lambda: self, sync_to_thread=False)
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
        """Open every connection before serving, close them after."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        """Connect to everything the gateway needs."""
        # Idle connections are let go before the servers drop them: uvicorn (MLServer,
        # the sample servers) closes an idle keep-alive connection after 5 s, and a
        # request sent on one it just closed fails as a disconnect, counted against it.
        connector = aiohttp.TCPConnector(
            limit=256, limit_per_host=128, ttl_dns_cache=300, keepalive_timeout=4.0
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        )
        for name, source in self.registry.sources.items():
            self.sources[name] = SourceClient(source, self._session)
        for name, plan in self.registry.plans.items():
            vector = [(f.name, f.dtype) for f in plan.features]
            vector += [(c.name, c.dtype) for c in plan.model.context]
            self.models[name] = ModelClient(plan.model, vector, self._session)
        self.assembler = FeatureAssembler(self.registry, self.store, self.sources)
        await self.store.open()
        self._pool = pool = await create_pool(self.settings.writeback)
        self._audit = AuditStore(pool, self.settings.writeback)
        await self._audit.start()
        self._dead_letters = DeadLetterQueue(pool, self.settings.writeback)
        self._retention = Retention(pool, self.settings.writeback)
        await self._retention.start()
        self._scorer = Scorer(self.registry, self.assembler, self.models, self._audit)
        self.replayer = Replayer(self.registry, self.models)
        self._reads = DecisionReads(pool, self.settings.writeback.verify_pace)
        self._sealer = DecisionSealer(pool)
        await self._sealer.start()
        if self.settings.run_relay:
            self._relay = OutboxRelay(pool, self.publisher, self.settings.writeback)
            await self._relay.start()

    async def stop(self) -> None:
        """Close connections; queued audit commits are flushed first."""
        if self._sealer is not None:
            await self._sealer.stop()
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

    def breakers(self) -> dict[str, str]:
        """The state of every breaker, by dependency."""
        states = {self.store.breaker.name: self.store.breaker.state}
        for client in self.sources.values():
            states[client.breaker.name] = client.breaker.state
        for model in self.models.values():
            states[model.breaker.name] = model.breaker.state
        return states

    async def readiness(self) -> Readiness:
        """Ask every dependency at once, each within the health timeout."""
        timeout = self.settings.health_timeout_s
        probes: dict[str, Awaitable[Any]] = {
            "postgres": self.audit.ping(),
            "redis": self.store.ping(),
            "kafka": self._kafka_ready(timeout),
        }
        for name, model in self.models.items():
            probes[f"model:{name}"] = self._model_ready(model, timeout)
        names = list(probes)
        results = await asyncio.gather(*(_timed(probes[n], timeout) for n in names))
        checks = dict(zip(names, results, strict=True))
        return Readiness(
            ready=all(c.ok for c in checks.values()), checks=checks, breakers=self.breakers()
        )

    async def _kafka_ready(self, limit_s: float) -> None:
        if not await self.publisher.ready(limit_s):
            raise ConnectionError("broker did not answer")

    @staticmethod
    async def _model_ready(model: ModelClient, limit_s: float) -> None:
        if not await model.ready(limit_s):
            raise ConnectionError(f"{model.model.endpoint} is not ready")


class Admission:
    """A cap on the ``/score`` requests in flight: past it, answer 503 at once.

    Under overload a gateway that queues makes every caller wait and time out; one
    that refuses the excess keeps serving the rest within their deadlines, and tells
    the others when to come back.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    async def __aenter__(self) -> None:
        if self.in_flight >= self.limit:
            raise Unavailable(
                f"overloaded: {self.limit} requests in flight; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1

    async def __aexit__(self, *_: object) -> None:
        self.in_flight -= 1


def _random_pii_key() -> bytes:
    log.warning("SCOREGATE_PII_KEY is not set: PII masks are not comparable across processes")
    return secrets.token_bytes(32)


def _pii_names(registry: Registry) -> frozenset[str]:
    names = {f.name for f in registry.features.values() if f.classification == "pii"}
    for model in registry.models.values():
        names.update(c.name for c in model.context if c.classification == "pii")
    return frozenset(names)


async def _timed(probe: Awaitable[Any], limit_s: float) -> Check:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            await probe
    except Exception as exc:  # any failure of a probe is a not-ready answer
        elapsed = (time.perf_counter() - started) * 1000
        return Check(ok=False, latency_ms=round(elapsed, 2), error=str(exc) or type(exc).__name__)
    return Check(ok=True, latency_ms=round((time.perf_counter() - started) * 1000, 2))


GatewayDep = NamedDependency[Gateway]


@post(
    "/score",
    status_code=200,
    opt=requires("scorer"),
    responses=error_responses(409, 422, 502, 503, 504),
)
async def score(
    data: JSONBody[ScoreRequest],
    gateway: GatewayDep,
    request: Request[Principal, Any, Any],
    timeout_ms: Annotated[
        int | None, HeaderParameter(name="X-Request-Timeout-Ms", required=False, gt=0)
    ] = None,
) -> ScoreResponse:
    """Score one subject with one model; the answer is committed to the audit store."""
    state = request.scope["state"]
    record_stage("decode", state.get(AUTH_DONE, time.time_ns()))
    # Metric labels come from the registry only: a caller cannot mint series.
    state["scoregate.model"] = data.model if data.model in gateway.registry.plans else "unknown"
    principal = request.user
    async with gateway.admission:
        response = await gateway.scorer.score(data, principal.key_id, timeout_ms)
    return response if principal.sees_pii else gateway.masker.response(response)


@post(
    "/features/push",
    status_code=200,
    opt=requires("feature_writer"),
    responses=error_responses(503),
)
async def push_features(data: JSONBody[PushRequest], gateway: GatewayDep) -> PushResponse:
    """Write feature values of one entity; older event times never overwrite newer."""
    return await gateway.pusher.push(data)


@get("/registry", responses=error_responses())
async def registry_file(gateway: GatewayDep) -> RegistryFile:
    """The registry: entities, sources, features and models, as loaded."""
    return gateway.registry.file


@get("/decisions/{decision_id:str}", opt=requires("auditor"), responses=error_responses(404, 503))
async def decision(
    decision_id: FromPath[str],
    gateway: GatewayDep,
    request: Request[Principal, Any, Any],
    purpose: PurposeHeader = None,
) -> DecisionRecord:
    """The whole decision record, with write-back and rollback state; the read is logged."""
    return await read_decision(gateway, decision_id, request.user, "api", purpose)


@post(
    "/decisions/{decision_id:str}/rollback",
    status_code=200,
    opt=requires("operator"),
    responses=error_responses(404, 503),
)
async def rollback(
    decision_id: FromPath[str],
    data: JSONBody[RollbackRequest],
    gateway: GatewayDep,
    request: Request[Principal, Any, Any],
) -> RollbackState:
    """Roll a decision back; a second rollback answers with the first."""
    result = await gateway.audit.rollback(decision_id, data.reason, request.user.key_id)
    if result is None:
        raise NotFound(f"no decision {decision_id}", field="decision_id")
    state, _ = result
    return state


@get("/health/live", opt={"exclude_from_auth": True})
async def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "live"}


@get(
    "/health/ready",
    opt={"exclude_from_auth": True},
    responses={
        503: ResponseSpec(
            data_container=Readiness,
            description="A dependency does not answer",
            generate_examples=False,
        )
    },
)
async def ready(gateway: GatewayDep) -> Response[Readiness]:
    """200 when PostgreSQL, Redis, Kafka and every model server answer; 503 otherwise."""
    readiness = await gateway.readiness()
    return Response(readiness, status_code=200 if readiness.ready else 503)


def _gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[ErrorBody]:
    exc = as_answered(exc)
    body = ErrorBody(
        status_code=exc.status_code, detail=exc.detail, field=exc.field, extra=exc.extra
    )
    return Response(body, status_code=exc.status_code, headers=with_retry_after(exc))


def _store_error(request: Request[Any, Any, Any], exc: AuditUnavailable) -> Response[ErrorBody]:
    return _gateway_error(request, store_error(exc))


def _validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[ErrorBody]:
    field = None
    detail = exc.detail
    if isinstance(exc.extra, list) and exc.extra and isinstance(exc.extra[0], dict):
        first = exc.extra[0]
        detail = str(first.get("message", detail))
        field = _blamed_field(request, first)
    body = ErrorBody(status_code=400, detail=detail, field=field)
    return Response(body, status_code=400)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    body = ErrorBody(status_code=exc.status_code, detail=exc.detail)
    return Response(body, status_code=exc.status_code, headers=exc.headers)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = ErrorBody(status_code=500, detail="internal error")
    return Response(body, status_code=500)


# One step of a msgspec path as Litestar passes it on: ``[0]``, ``['amount']``, ``[...]``
# (a dict value, key not named) or a field name.
_STEP = re.compile(r"\[(\d+)\]|\['((?:[^'\\]|\\.)*)'\]|(\[\.\.\.\])|\.?([^.\[]+)")
_NAMED_IN_MESSAGE = re.compile(r"(?:unknown|missing required) field `([^`]+)`")


def _blamed_field(request: Request[Any, Any, Any], error: dict[str, Any]) -> str | None:
    """The field a validation error blames, dotted: ``context.amount``, ``lineage.ref``.

    Litestar names a parameter by its Python name and a body field by msgspec's path
    (``context[...]``). msgspec does not name the key of a bad dict value, so that key
    is found again: the first value of that dict its declared type does not admit.
    """
    key = str(error.get("key") or "")
    if error.get("source") != "body":
        return _parameter_name(request, key) or None
    data = request.route_handler.parsed_data_field
    body = ScopeState.from_scope(request.scope).json
    names = _resolve(
        "" if key == "data" else key,
        None if body is Empty else body,
        data.annotation if data else None,
    )
    named = _NAMED_IN_MESSAGE.search(str(error.get("message", "")))
    if named:
        names.append(named.group(1))
    return ".".join(names) or None


def _parameter_name(request: Request[Any, Any, Any], key: str) -> str:
    """A parameter as the caller names it (``X-Request-Timeout-Ms``, not ``timeout_ms``)."""
    parameter = request.route_handler.parsed_fn_signature.parameters.get(key)
    kwarg = parameter.kwarg_definition if parameter else None
    names = (getattr(kwarg, alias, None) for alias in ("header", "query", "cookie", "name"))
    return next((name for name in names if isinstance(name, str) and name), key)


def _resolve(path: str, value: Any, annotation: Any) -> list[str]:
    """The names along a msgspec path, walking the body and its declared type together."""
    names: list[str] = []
    for step in _STEP.finditer(path):
        index, quoted, unnamed, name = step.groups()
        if name is not None:
            names.append(name)
            annotation = _field_type(annotation, name)
            value = value.get(name) if isinstance(value, dict) else None
        elif index is not None:
            names.append(index)
            annotation = _container_arg(annotation, (list, tuple, set, frozenset), 0)
            position = int(index)
            value = value[position] if isinstance(value, list) and position < len(value) else None
        else:
            annotation = _container_arg(annotation, (dict,), 1)
            found = quoted if unnamed is None else _first_refused_key(value, annotation)
            if found is None:
                break
            names.append(found)
            value = value.get(found) if isinstance(value, dict) else None
    return names


def _arms(annotation: Any) -> list[Any]:
    """The members of a union (or the type itself), ``Annotated`` unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _arms(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [arm for member in get_args(annotation) for arm in _arms(member)]
    return [annotation]


def _field_type(annotation: Any, name: str) -> Any:
    for arm in _arms(annotation):
        if isinstance(arm, type) and issubclass(arm, msgspec.Struct):
            for field in msgspec.structs.fields(arm):
                if field.encode_name == name:
                    return field.type
    return None


def _container_arg(annotation: Any, origins: tuple[type, ...], position: int) -> Any:
    for arm in _arms(annotation):
        args = get_args(arm)
        if get_origin(arm) in origins and len(args) > position:
            return args[position]
    return None


def _first_refused_key(value: Any, value_type: Any) -> str | None:
    if not isinstance(value, dict) or value_type is None:
        return None
    for key, item in value.items():
        try:
            msgspec.convert(item, value_type, strict=False)
        except msgspec.ValidationError:
            return str(key)
    return None


def create_app(settings: GatewaySettings, registry: Registry | None = None) -> Litestar:
    """The gateway application; it refuses to start without API keys."""
    if not settings.api_keys:
        raise ConfigurationError(
            "no API keys configured: set SCOREGATE_API_KEYS or SCOREGATE_API_KEYS_FILE"
            " (scoregate keys new --role admin makes one)"
        )
    provider = tracer_provider_from_env()
    if provider is not None:
        trace.set_tracer_provider(provider)
    refresh_tracing()
    authentication = DefineMiddleware(
        ApiKeyAuthentication, keyring=KeyRing(settings.api_keys), exclude=["^/schema"]
    )
    app = Litestar(
        middleware=[TracingMiddleware, authentication],
        route_handlers=[
            score,
            push_features,
            registry_file,
            decision,
            rollback,
            live,
            ready,
            *operation_handlers(metrics_public=settings.metrics_public),
            *audit_handlers,
            *ui_handlers,
        ],
        plugins=[Gateway(settings, registry)],
        exception_handlers={
            GatewayError: _gateway_error,
            AuditUnavailable: _store_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(title="scoregate", version="1"),
        template_config=ui_template_config(),
        signature_types=[Gateway],
    )
    # Built once here (and cached by Litestar), so the served schema is the corrected one.
    scalar_unions_as_type_lists(app.openapi_schema)
    return app
