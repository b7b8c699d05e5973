"""``POST /features/push``: values of one entity into the online store, with lineage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.features import FeatureScalar, PushRequest, PushResponse
from gateway.errors import BadRequest, Unavailable
from gateway.features.online_store import (
    OnlineStore,
    StoredValue,
    StoreUnavailable,
    lineage_id_for,
    to_millis,
)
from gateway.registry import CONTROL_CHARACTER, Registry, coerce

# A pushed event time this far ahead of our clock is a producer bug; accepting it
# would pin the value, since nothing older may overwrite it.
MAX_CLOCK_SKEW = timedelta(minutes=5)


class FeaturePusher:
    """Checks pushed values against the registry and writes them compare-and-set."""

    def __init__(self, registry: Registry, store: OnlineStore) -> None:
        self._registry = registry
        self._store = store

    def _check(self, request: PushRequest) -> tuple[str, str, dict[str, FeatureScalar]]:
        if len(request.entities) != 1:
            raise BadRequest("name exactly one entity", field="entities")
        ((key, entity_id),) = request.entities.items()
        entity = self._registry.entity_by_key.get(key)
        if entity is None:
            raise BadRequest(f"unknown entity key {key!r}", field=f"entities.{key}")
        # The id names a Redis key: only ids the entity admits.
        problem = self._registry.ids[entity.name].problem(entity_id)
        if problem is not None:
            raise BadRequest(problem, field=f"entities.{key}")
        values = self._values(entity.name, request)
        _check_lineage(request)
        if request.event_time.tzinfo is None:
            raise BadRequest("event_time needs a UTC offset", field="event_time")
        if request.event_time - datetime.now(UTC) > MAX_CLOCK_SKEW:
            raise BadRequest("event_time is in the future", field="event_time")
        return entity.name, entity_id, values

    def _values(self, entity: str, request: PushRequest) -> dict[str, FeatureScalar]:
        values: dict[str, FeatureScalar] = {}
        for name, raw in request.features.items():
            feature = self._registry.features.get(name)
            if feature is None:
                raise BadRequest(f"unknown feature {name!r}", field=f"features.{name}")
            if feature.entity != entity:
                raise BadRequest(
                    f"feature {name!r} belongs to entity {feature.entity!r}, not {entity!r}",
                    field=f"features.{name}",
                )
            try:
                value = coerce(raw, feature.dtype)
            except TypeError as exc:
                raise BadRequest(f"features.{name}: {exc}", field=f"features.{name}") from exc
            if isinstance(value, str) and "\x00" in value:
                # Served into decision records, which PostgreSQL could not read back.
                raise BadRequest(
                    f"features.{name}: a NUL character cannot be stored", field=f"features.{name}"
                )
            values[name] = value
        return values

    async def push(self, request: PushRequest) -> PushResponse:
        """Write the values unless the store holds newer ones; nothing on a bad request."""
        entity, entity_id, values = self._check(request)
        lineage = request.lineage
        event_time_ms = to_millis(request.event_time)
        lineage_id = lineage_id_for(
            "push",
            lineage.source_system,
            lineage.source_ref,
            lineage.schema_version,
            lineage.transform,
            entity,
            entity_id,
            event_time_ms,
        )
        ingested_at_ms = to_millis(datetime.now(UTC))
        stored = {
            name: StoredValue(
                value=value,
                event_time_ms=event_time_ms,
                ingested_at_ms=ingested_at_ms,
                lineage_id=lineage_id,
                kind="push",
                source_system=lineage.source_system,
                source_ref=lineage.source_ref,
                schema_version=(
                    lineage.schema_version
                    if lineage.schema_version is not None
                    else self._registry.features[name].schema_version
                ),
                transform=lineage.transform,
                sequence=ingested_at_ms,
                channel="api",
            )
            for name, value in values.items()
        }
        try:
            # A second push of the same event time is a correction: its later ingest
            # time orders it after the first.
            written = await self._store.write(
                entity, entity_id, event_time_ms, stored, sequence=ingested_at_ms
            )
        except StoreUnavailable as exc:
            raise Unavailable("the online store is unavailable", field="online_store") from exc
        return PushResponse(
            lineage_id=lineage_id,
            written=written,
            skipped_older=[name for name in values if name not in written],
        )


def _check_lineage(request: PushRequest) -> None:
    lineage = request.lineage
    for part, text in (
        ("source_system", lineage.source_system),
        ("source_ref", lineage.source_ref),
        ("transform", lineage.transform),
    ):
        if text is not None and CONTROL_CHARACTER.search(text):
            raise BadRequest(
                f"lineage.{part} must not hold control characters", field=f"lineage.{part}"
            )
