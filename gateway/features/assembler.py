"""Assembling a model's feature vector, feature by feature, with freshness and lineage.

For every stored feature: the online store first (one round trip for all entities);
if the value is missing or beyond its freshness bound, the feature's source API (one
call per source record, all sources concurrently, inside the request deadline),
written back to the store; if the source fails, the feature's ``on_unavailable``
policy. The bound is the feature's freshness SLA, or the request's own
``max_staleness_ms`` where that is tighter: a caller may ask for fresher data than
the SLA, never for staler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

from contracts.features import FeatureScalar, FeatureValue, Lineage
from contracts.registry import Feature
from gateway.breaker import BreakerOpen
from gateway.deadline import Deadline, DeadlineReached
from gateway.errors import DeadlineExceeded, Unavailable
from gateway.features.online_store import (
    OnlineStore,
    StoredValue,
    StoreUnavailable,
    lineage_id_for,
    to_millis,
)
from gateway.features.sources import SourceClient, SourceError, SourceRecord
from gateway.observability import SCHEMA_CHANGES, stage
from gateway.registry import ModelPlan, Registry, coerce

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Assembly:
    """The assembled features of one request.

    Attributes:
        values: every feature as served, in vector order (stored, then context).
        lineage: the full lineage of every value that has one.
        degraded: true when any value is stale or a default, or the store was down.
        problems: per feature, why it was not served fresh or from its source.
        online_store_ms: time spent reading the store.
        sources_ms: time spent on source calls.
        bounds: the request's own staleness bound per stored feature, where it sent
            one (None when it sent none).
    """

    values: dict[str, FeatureValue] = field(default_factory=dict)
    lineage: dict[str, Lineage] = field(default_factory=dict)
    degraded: bool = False
    problems: dict[str, str] = field(default_factory=dict)
    online_store_ms: float = 0.0
    sources_ms: float = 0.0
    bounds: Mapping[str, int] | None = None


class FeatureUnavailable(Unavailable):
    """A feature whose policy is ``fail`` could not be served."""


_FetchKey = tuple[str, str, str]
"""(source name, entity name, request path)."""

_WriteKey = tuple[str, str, str, frozenset[str]]
"""(entity name, entity id, lineage id, feature names) of a read-through write."""


class FeatureAssembler:
    """Builds feature vectors from the online store and source APIs."""

    def __init__(
        self,
        registry: Registry,
        store: OnlineStore,
        sources: Mapping[str, SourceClient],
    ) -> None:
        self._registry = registry
        self._store = store
        self._sources = sources
        self._writes: dict[_WriteKey, asyncio.Task[None]] = {}
        # What stands for the entity's id in each sourced feature's path: "{customer_id}".
        self._placeholders = {
            feature.name: f"{{{registry.entities[feature.entity].key}}}"
            for feature in registry.features.values()
        }

    async def assemble(
        self,
        plan: ModelPlan,
        entity_ids: Mapping[str, str],
        context: Mapping[str, FeatureScalar],
        deadline: Deadline,
        now: datetime,
        bounds: Mapping[str, int] | None = None,
    ) -> Assembly:
        """Serve every feature of ``plan`` for the entities named in ``entity_ids``.

        Args:
            plan: The model's plan.
            entity_ids: The request's entity ids by entity name.
            context: The request-time features, as their declared types.
            deadline: What is left of the request's time for features.
            now: When the request arrived; staleness is measured from it.
            bounds: The request's own staleness bound per stored feature name, where it
                sent one; a value older than ``applied_bound(SLA, bound)`` is not fresh.
        """
        assembly = Assembly(bounds=bounds)
        now_ms = to_millis(now)
        stored = await self._read_store(plan, entity_ids, deadline, assembly)

        to_fetch: dict[_FetchKey, list[Feature]] = defaultdict(list)
        for feature in plan.features:
            current = stored.get(feature.name)
            # Without a bound in the request the SLA is the limit, at no cost of its own.
            limit = (
                feature.max_staleness_ms
                if bounds is None
                else applied_bound(feature.max_staleness_ms, bounds.get(feature.name))
            )
            if current is not None and now_ms - current.event_time_ms <= limit:
                self._serve_stored(assembly, feature, current, entity_ids, now_ms, "fresh")
            elif feature.source is not None and feature.path is not None:
                placeholder = self._placeholders[feature.name]
                path = feature.path.replace(placeholder, path_value(entity_ids[feature.entity]))
                to_fetch[(feature.source, feature.entity, path)].append(feature)
            else:
                reason = _unserved_reason(feature, current, now_ms, limit)
                self._apply_policy(assembly, feature, current, entity_ids, now_ms, reason)

        if to_fetch:
            started = time.perf_counter()
            await self._fetch_all(assembly, to_fetch, stored, entity_ids, deadline, now_ms)
            assembly.sources_ms = (time.perf_counter() - started) * 1000
            # Serve in vector order whatever order the stages filled them in (without
            # fetches, the loop above filled them in that order).
            values = assembly.values
            assembly.values = {f.name: values[f.name] for f in plan.features}
            lineage = assembly.lineage
            assembly.lineage = {n: lineage[n] for n in assembly.values if n in lineage}
        for name, value in context.items():
            assembly.values[name] = FeatureValue(value=value, status="request", source="request")
        return assembly

    async def _read_store(
        self,
        plan: ModelPlan,
        entity_ids: Mapping[str, str],
        deadline: Deadline,
        assembly: Assembly,
    ) -> dict[str, StoredValue]:
        reads = [(entity, entity_ids[entity], names) for entity, names in plan.reads]
        started = time.perf_counter()
        try:
            with stage("online_store read"):
                rows = await self._store.read(reads, deadline)
        except StoreUnavailable as exc:
            # While the breaker is open every request lands here: its state changes are
            # logged by the breaker, not once per request.
            level = logging.DEBUG if isinstance(exc.__cause__, BreakerOpen) else logging.WARNING
            log.log(level, "online store unavailable, serving from sources: %s", exc)
            assembly.degraded = True
            return {}
        finally:
            assembly.online_store_ms = (time.perf_counter() - started) * 1000
        return {name: value for row in rows for name, value in row.items()}

    async def _fetch_all(
        self,
        assembly: Assembly,
        to_fetch: Mapping[_FetchKey, list[Feature]],
        stored: Mapping[str, StoredValue],
        entity_ids: Mapping[str, str],
        deadline: Deadline,
        now_ms: int,
    ) -> None:
        keys = list(to_fetch)
        results = await asyncio.gather(
            *(self._sources[source].fetch(path, deadline) for source, _, path in keys),
            return_exceptions=True,
        )
        for key, result in zip(keys, results, strict=True):
            features = to_fetch[key]
            if isinstance(result, SourceRecord):
                self._serve_fetched(assembly, key, features, result, stored, entity_ids, now_ms)
                continue
            reason = _failure_reason(key[0], result)
            ended = isinstance(result, DeadlineReached)
            for feature in features:
                current = stored.get(feature.name)
                self._apply_policy(assembly, feature, current, entity_ids, now_ms, reason, ended)

    def _serve_fetched(
        self,
        assembly: Assembly,
        key: _FetchKey,
        features: list[Feature],
        record: SourceRecord,
        stored: Mapping[str, StoredValue],
        entity_ids: Mapping[str, str],
        now_ms: int,
    ) -> None:
        source, entity, _ = key
        entity_id = entity_ids[entity]
        event_time_ms = to_millis(record.event_time)
        system = f"source:{source}"
        fresh_values: dict[str, StoredValue] = {}
        for feature in features:
            try:
                fetched = stored_from_record(record, feature, system, "fallback")
            except (KeyError, TypeError) as exc:
                # The source's answer no longer fits the feature's declared contract.
                kind = "missing_column" if isinstance(exc, KeyError) else "column_type"
                SCHEMA_CHANGES.labels(source=system, feature=feature.name, kind=kind).inc()
                reason = f"{system} answered without a valid {feature.name}: {exc}"
                current = stored.get(feature.name)
                self._apply_policy(assembly, feature, current, entity_ids, now_ms, reason)
                continue
            fresh_values[feature.name] = fetched
            self._serve_stored(assembly, feature, fetched, entity_ids, now_ms, "fallback")
        if fresh_values:
            self._write_behind(entity, entity_id, event_time_ms, fresh_values)

    def _write_behind(
        self, entity: str, entity_id: str, event_time_ms: int, values: dict[str, StoredValue]
    ) -> None:
        """Write fetched values back to the store without making the request wait."""
        if self._store.breaker.state == "open":
            return
        lineage_id = next(iter(values.values())).lineage_id
        key = (entity, entity_id, lineage_id, frozenset(values))
        if key in self._writes:
            # Requests that shared one source call write its values back once, not each.
            return
        task = asyncio.create_task(self._write(entity, entity_id, event_time_ms, values))
        self._writes[key] = task
        task.add_done_callback(lambda _: self._writes.pop(key, None))

    async def _write(
        self, entity: str, entity_id: str, event_time_ms: int, values: dict[str, StoredValue]
    ) -> None:
        try:
            await self._store.write(entity, entity_id, event_time_ms, values)
        except StoreUnavailable as exc:
            log.warning("read-through write to the online store failed: %s", exc)

    async def drain(self) -> None:
        """Wait for pending read-through writes (at shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes.values(), return_exceptions=True)

    def _serve_stored(
        self,
        assembly: Assembly,
        feature: Feature,
        stored: StoredValue,
        entity_ids: Mapping[str, str],
        now_ms: int,
        status: str,
    ) -> None:
        lineage = stored.lineage(feature.entity, entity_ids[feature.entity])
        source = "online_store" if status in {"fresh", "stale"} else stored.source_system
        bounds = assembly.bounds
        assembly.values[feature.name] = FeatureValue(
            value=stored.value,
            status=status,  # type: ignore[arg-type]
            source=source,
            event_time=lineage.event_time,
            ingested_at=lineage.ingested_at,
            staleness_ms=max(0, now_ms - stored.event_time_ms),
            max_staleness_ms=feature.max_staleness_ms,
            lineage_id=stored.lineage_id,
            schema_version=stored.schema_version,
            effective_time=lineage.effective_time,
            requested_max_staleness_ms=None if bounds is None else bounds.get(feature.name),
        )
        assembly.lineage[feature.name] = lineage

    def _apply_policy(
        self,
        assembly: Assembly,
        feature: Feature,
        current: StoredValue | None,
        entity_ids: Mapping[str, str],
        now_ms: int,
        reason: str,
        deadline_ended: bool = False,
    ) -> None:
        """Serve a feature that could be neither fresh nor fetched, as its policy says.

        A feature that must not be served otherwise fails the request: with 504 when
        the request's deadline, not its source, ended the fetch, else with 503.
        """
        assembly.problems[feature.name] = reason
        policy = feature.on_unavailable
        if policy == "serve_stale" and current is not None:
            assembly.degraded = True
            self._serve_stored(assembly, feature, current, entity_ids, now_ms, "stale")
        elif policy != "fail" and feature.default is not None:
            assembly.degraded = True
            assembly.values[feature.name] = FeatureValue(
                value=coerce(feature.default, feature.dtype),
                status="default",
                source="default",
                max_staleness_ms=feature.max_staleness_ms,
                schema_version=feature.schema_version,
                requested_max_staleness_ms=(
                    None if assembly.bounds is None else assembly.bounds.get(feature.name)
                ),
            )
        elif deadline_ended:
            raise DeadlineExceeded(
                f"feature {feature.name} was not fetched within the request deadline"
                f" and its policy is {policy!r}: {reason}",
                field=f"features.{feature.name}",
                extra={"feature": feature.name, "reason": reason},
            )
        else:
            raise FeatureUnavailable(
                f"feature {feature.name} is unavailable and its policy is {policy!r}: {reason}",
                field=f"features.{feature.name}",
                extra={"feature": feature.name, "reason": reason},
            )


def stored_from_record(
    record: SourceRecord, feature: Feature, system: str, kind: str
) -> StoredValue:
    """A feature's value in a fetched source record, as the online store keeps it.

    Args:
        record: The source's answer.
        feature: The feature to read from it.
        system: The source as lineage names it (``source:<name>``).
        kind: ``fallback`` for a value fetched to serve a request, ``reconcile`` for one
            a reconciliation run repairs the store with.

    Raises:
        KeyError: The answer has no field for the feature.
        TypeError: The field's value does not fit the feature's dtype.
    """
    event_time_ms = to_millis(record.event_time)
    return StoredValue(
        value=coerce(record.body[feature.field or feature.name], feature.dtype),
        event_time_ms=event_time_ms,
        ingested_at_ms=to_millis(record.fetched_at),
        lineage_id=lineage_id_for(system, record.ref, event_time_ms),
        kind=kind,
        source_system=system,
        source_ref=record.ref,
        schema_version=feature.schema_version,
        transform=None,
    )


def applied_bound(sla_ms: int, requested_ms: int | None) -> int:
    """The staleness bound a stored value is judged by, in milliseconds.

    Args:
        sla_ms: The feature's freshness SLA in the registry.
        requested_ms: The request's own bound for the feature, if it sent one.

    Returns:
        The smaller of the two: a request can tighten the SLA, never loosen it.
    """
    if requested_ms is None or requested_ms >= sla_ms:
        return sla_ms
    return requested_ms


def _unserved_reason(
    feature: Feature, current: StoredValue | None, now_ms: int, limit_ms: int
) -> str:
    """Why a feature without a source cannot be served from the store as fresh."""
    if current is None:
        return "not in the online store"
    if now_ms - current.event_time_ms <= feature.max_staleness_ms:
        return f"older than the request's max_staleness_ms ({limit_ms} ms), no source"
    return "stale, no source"


def path_value(value: str) -> str:
    """``value`` percent-encoded to stand for itself anywhere in a URL path or query.

    Every character but the unreserved ones is encoded (``/``, ``?``, ``#`` and ``%``
    too), so a caller's id can neither leave its path segment nor end the path. An id
    of dots only is spelled out as well: ``.`` and ``..`` would be dot-segments, which
    clients and servers resolve to another path.
    """
    encoded = quote(value, safe="")
    if encoded.strip(".") == "":
        return "%2E" * len(encoded)
    return encoded


def _failure_reason(source: str, exc: BaseException) -> str:
    if isinstance(exc, SourceError | BreakerOpen):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"source {source}: no answer before the request deadline"
    return f"source {source}: {type(exc).__name__}: {exc}"
