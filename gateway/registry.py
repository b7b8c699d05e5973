"""Loading the registry file: decode, check cross-references, index for the hot path and ingest."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec

from contracts.features import FeatureScalar
from contracts.registry import (
    BurnRateAlert,
    ContextFeature,
    DType,
    Entity,
    Feature,
    Model,
    RegistryFile,
    Source,
    Stream,
    TableMapping,
)
from contracts.scoring import ModelRef

_Named = TypeVar("_Named", Entity, Source, Feature, Model, Stream)


class RegistryError(Exception):
    """The registry file is not valid; the message names the file and the field."""

    def __init__(self, origin: str, message: str, path: str) -> None:
        super().__init__(f"{origin}: {message} - at `{path}`")
        self.origin = origin
        self.path = path


Coercer = Callable[[object], FeatureScalar]
"""Returns a value as one dtype or raises ``TypeError``."""


def _refused(value: object, dtype: DType) -> TypeError:
    return TypeError(f"expected {dtype}, got {type(value).__name__}")


def _int64(value: object) -> FeatureScalar:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _refused(value, "int64")


def _float64(value: object) -> FeatureScalar:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _refused(value, "float64")


def _bool(value: object) -> FeatureScalar:
    if isinstance(value, bool):
        return value
    raise _refused(value, "bool")


def _string(value: object) -> FeatureScalar:
    if isinstance(value, str):
        return value
    raise _refused(value, "string")


COERCERS: dict[DType, Coercer] = {
    "int64": _int64,
    "float64": _float64,
    "bool": _bool,
    "string": _string,
}
"""The coercer of each dtype (:func:`coerce` without the dispatch on the dtype)."""


def coerce(value: object, dtype: DType) -> FeatureScalar:
    """Return ``value`` as ``dtype`` or raise ``TypeError``.

    Integers are accepted where floats are declared (JSON does not tell ``1`` from
    ``1.0``); nothing else converts.
    """
    return COERCERS[dtype](value)


# Control characters (C0, DEL, C1) have no business in an id, a key or a lineage
# reference: they would reach logs, Redis keys and URLs, and PostgreSQL cannot store a NUL.
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Ids of an entity without a declared pattern: anything printable.
_PRINTABLE_ID = re.compile(r"[^\x00-\x1f\x7f-\x9f]*")


@dataclass(frozen=True, slots=True)
class EntityIds:
    """Which ids an entity admits: its declared pattern (or printable text) and length.

    Attributes:
        key: the entity key the ids are sent under (``customer_id``).
        pattern: what every id must match in full.
        max_length: the most characters an id may have.
    """

    key: str
    pattern: re.Pattern[str]
    max_length: int

    @classmethod
    def of(cls, entity: Entity) -> EntityIds:
        """The rule an entity's registry entry declares."""
        pattern = _PRINTABLE_ID if entity.pattern is None else re.compile(entity.pattern)
        return cls(key=entity.key, pattern=pattern, max_length=entity.max_length)

    def problem(self, entity_id: str) -> str | None:
        """Why ``entity_id`` is not an id of this entity, or None if it is one."""
        if len(entity_id) > self.max_length:
            return f"{self.key} is longer than {self.max_length} characters"
        # fullmatch: a `$` in the pattern would otherwise admit a trailing newline.
        if self.pattern.fullmatch(entity_id) is None:
            if self.pattern is _PRINTABLE_ID:
                return f"{self.key} must not contain control characters"
            return f"{self.key} must match {self.pattern.pattern}"
        return None


@dataclass(frozen=True, slots=True)
class EntityKey:
    """One entity key a model's requests must carry, and the ids it admits.

    Attributes:
        key: the key requests send the id under (``customer_id``).
        entity: the entity's name (``customer``).
        ids: the ids the entity admits.
    """

    key: str
    entity: str
    ids: EntityIds


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """What scoring one model needs, worked out once at start-up.

    Attributes:
        model: the model's registry entry.
        subject: the entity decisions of this model are about.
        entities: every entity whose key a request must carry, subject first.
        features: the stored features in vector order.
        vector: names of the whole input vector: stored features, then context.
        pii: names in the vector classified ``pii``.
        published: names whose values travel in outcome events.
        entity_keys: per entity key a request must carry, its entity and ids, in the
            order of ``entities``.
        context: per context feature, in declared order, the coercer of its dtype.
        reads: per entity, the names of its stored features in vector order (one
            online-store read each).
        model_ref: the model's name and version as records and events carry them.
    """

    model: Model
    subject: Entity
    entities: tuple[Entity, ...]
    features: tuple[Feature, ...]
    vector: tuple[str, ...]
    pii: frozenset[str]
    published: tuple[str, ...]
    entity_keys: Mapping[str, EntityKey]
    context: Mapping[str, Coercer]
    reads: tuple[tuple[str, tuple[str, ...]], ...]
    model_ref: ModelRef


@dataclass(frozen=True)
class Registry:
    """The checked registry, indexed by name."""

    file: RegistryFile
    digest: str
    entities: dict[str, Entity]
    entity_by_key: dict[str, Entity]
    sources: dict[str, Source]
    features: dict[str, Feature]
    models: dict[str, Model]
    plans: dict[str, ModelPlan] = field(default_factory=dict)
    ids: dict[str, EntityIds] = field(default_factory=dict)
    """Per entity name, the ids it admits."""
    streams: dict[str, Stream] = field(default_factory=dict)
    """The streams ``scoregate ingest`` reads, by topic (each topic is one stream's)."""


def load_registry(path: Path) -> Registry:
    """Read and check the registry file at ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegistryError(str(path), f"cannot read the registry: {exc.strerror}", "$") from exc
    return parse_registry(data, origin=str(path))


def parse_registry(data: bytes, origin: str = "<registry>") -> Registry:
    """Decode TOML registry bytes, check every cross-reference and build the indexes."""
    try:
        spec = msgspec.toml.decode(data, type=RegistryFile)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `")
        raise RegistryError(origin, message or str(exc), where.rstrip("`") or "$") from exc
    except msgspec.DecodeError as exc:
        raise RegistryError(origin, f"not valid TOML: {exc}", "$") from exc
    checker = _Checker(origin)
    entities = checker.index(spec.entities, "entities")
    entity_by_key = {}
    ids = {}
    for i, entity in enumerate(spec.entities):
        if entity.key in entity_by_key:
            checker.fail("entity key used twice", f"$.entities[{i}].key")
        entity_by_key[entity.key] = entity
        ids[entity.name] = checker.entity_ids(entity, f"$.entities[{i}]")
    sources = checker.index(spec.sources, "sources")
    features = checker.index(spec.features, "features")
    models = checker.index(spec.models, "models")
    record_paths: dict[tuple[str, str], str] = {}
    for i, feature in enumerate(spec.features):
        at = f"$.features[{i}]"
        checker.feature(feature, at, entities, sources)
        if feature.source is not None and feature.path is not None:
            # One call per entity per source: its features must live at one path.
            path = record_paths.setdefault((feature.source, feature.entity), feature.path)
            if path != feature.path:
                checker.fail(
                    f"features of {feature.entity} from {feature.source} must share one path"
                    f" ({path})",
                    f"{at}.path",
                )
    plans = {
        model.name: checker.model(model, f"$.models[{i}]", entities, features, ids)
        for i, model in enumerate(spec.models)
    }
    streams = checker.streams(spec.streams, entities, features)
    checker.alerts(spec.freshness.alerts)
    return Registry(
        file=spec,
        digest=hashlib.sha256(data).hexdigest()[:16],
        entities=entities,
        entity_by_key=entity_by_key,
        sources=sources,
        features=features,
        models=models,
        plans=plans,
        ids=ids,
        streams=streams,
    )


class _Checker:
    """Cross-reference checks; each failure names the path of the offending field."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, message: str, path: str) -> None:
        raise RegistryError(self.origin, message, path)

    def index(self, items: Sequence[_Named], section: str) -> dict[str, _Named]:
        by_name: dict[str, _Named] = {}
        for i, item in enumerate(items):
            if item.name in by_name:
                self.fail(f"duplicate name {item.name!r}", f"$.{section}[{i}].name")
            by_name[item.name] = item
        return by_name

    def entity_ids(self, entity: Entity, at: str) -> EntityIds:
        try:
            return EntityIds.of(entity)
        except re.error as exc:
            self.fail(f"pattern is not a regular expression: {exc}", f"{at}.pattern")
            raise AssertionError from exc  # unreachable: fail raises

    def feature(
        self,
        feature: Feature,
        at: str,
        entities: dict[str, Entity],
        sources: dict[str, Source],
    ) -> None:
        entity = entities.get(feature.entity)
        if entity is None:
            self.fail(f"unknown entity {feature.entity!r}", f"{at}.entity")
            return
        if feature.source is not None:
            if feature.source not in sources:
                self.fail(f"unknown source {feature.source!r}", f"{at}.source")
            if feature.path is None:
                self.fail("a feature with a source needs the path to read it", f"{at}.path")
            elif set(re.findall(r"{(\w+)}", feature.path)) != {entity.key}:
                self.fail(f"path must contain exactly {{{entity.key}}}", f"{at}.path")
        if feature.default is not None:
            try:
                coerce(feature.default, feature.dtype)
            except TypeError as exc:
                self.fail(f"default does not match dtype: {exc}", f"{at}.default")
        elif feature.on_unavailable == "default":
            self.fail("on_unavailable = 'default' needs a default", f"{at}.default")

    def model(
        self,
        model: Model,
        at: str,
        entities: dict[str, Entity],
        features: dict[str, Feature],
        ids: Mapping[str, EntityIds],
    ) -> ModelPlan:
        subject = entities.get(model.subject)
        if subject is None:
            self.fail(f"unknown entity {model.subject!r}", f"{at}.subject")
            raise AssertionError  # unreachable: fail raises
        stored: list[Feature] = []
        for j, name in enumerate(model.features):
            if name not in features:
                self.fail(f"unknown feature {name!r}", f"{at}.features[{j}]")
            if name in model.features[:j]:
                self.fail(f"feature {name!r} listed twice", f"{at}.features[{j}]")
            stored.append(features[name])
        for j, context in enumerate(model.context):
            if context.name in features or context.name in [c.name for c in model.context[:j]]:
                self.fail(f"context name {context.name!r} is taken", f"{at}.context[{j}].name")
        dtypes = [f.dtype for f in stored] + [c.dtype for c in model.context]
        if model.input.layout == "tensor" and "string" in dtypes:
            self.fail("a tensor input cannot carry string features", f"{at}.input.layout")
        self.batching(model, at)
        # Subject first, then each entity once, in the order features name them.
        needed = tuple(dict.fromkeys([subject] + [entities[f.entity] for f in stored]))
        specs: list[Feature | ContextFeature] = [*stored, *model.context]
        published = [
            spec.name
            for spec in specs
            if (spec.include_in_events is not False)
            and (spec.include_in_events or spec.classification != "pii")
        ]
        reads: dict[str, list[str]] = {}
        for feature in stored:
            reads.setdefault(feature.entity, []).append(feature.name)
        return ModelPlan(
            model=model,
            subject=subject,
            entities=needed,
            features=tuple(stored),
            vector=tuple([f.name for f in stored] + [c.name for c in model.context]),
            pii=frozenset(spec.name for spec in specs if spec.classification == "pii"),
            published=tuple(published),
            entity_keys={e.key: EntityKey(e.key, e.name, ids[e.name]) for e in needed},
            context={c.name: COERCERS[c.dtype] for c in model.context},
            reads=tuple((entity, tuple(names)) for entity, names in reads.items()),
            model_ref=ModelRef(name=model.name, version=model.version),
        )

    def batching(self, model: Model, at: str) -> None:
        if model.max_batch_size > 1:
            if model.max_batch_wait_ms >= model.timeout_ms:
                self.fail(
                    f"max_batch_wait_ms must be shorter than timeout_ms ({model.timeout_ms}):"
                    " the wait is spent from the model's share of the deadline",
                    f"{at}.max_batch_wait_ms",
                )
            return
        # Without batching these settings would do nothing: say so rather than ignore them.
        if model.max_batch_wait_ms > 0:
            self.fail(
                "max_batch_wait_ms needs max_batch_size above 1: the wait fills a batch",
                f"{at}.max_batch_wait_ms",
            )
        if model.max_batches_in_flight > 1:
            self.fail(
                "max_batches_in_flight needs max_batch_size above 1: without batching"
                " every row is a call of its own",
                f"{at}.max_batches_in_flight",
            )

    def streams(
        self,
        streams: Sequence[Stream],
        entities: dict[str, Entity],
        features: dict[str, Feature],
    ) -> dict[str, Stream]:
        self.index(streams, "streams")
        by_topic: dict[str, Stream] = {}
        for i, stream in enumerate(streams):
            at = f"$.streams[{i}]"
            if stream.topic in (".", ".."):
                self.fail(f"{stream.topic!r} is not a Kafka topic name", f"{at}.topic")
            other = by_topic.get(stream.topic)
            if other is not None:
                self.fail(
                    f"topic {stream.topic!r} is stream {other.name!r}'s already", f"{at}.topic"
                )
            by_topic[stream.topic] = stream
            if stream.format == "feature_update":
                if stream.tables:
                    self.fail(
                        "a feature_update stream has no tables: its events name their features",
                        f"{at}.tables",
                    )
                continue
            if not stream.tables:
                self.fail("a debezium stream maps at least one table", f"{at}.tables")
            if stream.schema_versions:
                self.fail(
                    "schema_versions are those of feature-update events: not for a debezium stream",
                    f"{at}.schema_versions",
                )
            seen: set[str] = set()
            for j, table in enumerate(stream.tables):
                if table.table in seen:
                    self.fail(f"table {table.table!r} mapped twice", f"{at}.tables[{j}].table")
                seen.add(table.table)
                self.table(table, f"{at}.tables[{j}]", entities, features)
        for i, stream in enumerate(streams):
            # Reading a dead-letter topic back in would dead-letter its records again.
            origin = by_topic.get(stream.topic.removesuffix(".dlq"))
            if stream.topic.endswith(".dlq") and origin is not None:
                self.fail(
                    f"{stream.topic!r} is the dead-letter topic of stream {origin.name!r}",
                    f"$.streams[{i}].topic",
                )
        return by_topic

    def alerts(self, alerts: Sequence[BurnRateAlert]) -> None:
        seen: set[str] = set()
        for i, alert in enumerate(alerts):
            at = f"$.freshness.alerts[{i}]"
            if alert.name in seen:
                self.fail(f"duplicate name {alert.name!r}", f"{at}.name")
            seen.add(alert.name)
            if alert.short_window_s >= alert.long_window_s:
                self.fail(
                    f"short_window_s must be shorter than long_window_s ({alert.long_window_s}):"
                    " the short window makes the alert clear soon after its cause ends",
                    f"{at}.short_window_s",
                )

    def table(
        self,
        table: TableMapping,
        at: str,
        entities: dict[str, Entity],
        features: dict[str, Feature],
    ) -> None:
        if table.entity not in entities:
            self.fail(f"unknown entity {table.entity!r}", f"{at}.entity")
        mapped: dict[str, str] = {}
        for column, mapping in table.columns.items():
            where = f"{at}.columns{_member(column)}"
            feature = features.get(mapping.feature)
            if feature is None:
                self.fail(f"unknown feature {mapping.feature!r}", f"{where}.feature")
                return
            if feature.entity != table.entity:
                self.fail(
                    f"feature {feature.name!r} belongs to entity {feature.entity!r},"
                    f" not {table.entity!r}",
                    f"{where}.feature",
                )
            if mapping.dtype != feature.dtype:
                self.fail(
                    f"column {column!r} is declared {mapping.dtype}, but feature"
                    f" {feature.name!r} is {feature.dtype}",
                    f"{where}.dtype",
                )
            if feature.name in mapped:
                self.fail(
                    f"feature {feature.name!r} is fed by column {mapped[feature.name]!r} already",
                    f"{where}.feature",
                )
            mapped[feature.name] = column


def _member(name: str) -> str:
    """A path step to a map's member: ``.name``, or ``["odd name"]`` when it is not a word."""
    return f".{name}" if re.fullmatch(r"\w+", name) else f"[{json.dumps(name)}]"
