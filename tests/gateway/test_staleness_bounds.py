"""The caller's ``max_staleness_ms`` without services: the bound applied, the bounds a
request resolves to, what its idempotency fingerprint covers, and the schema's arms.

The served behaviour against real services is in ``test_score_staleness_bounds.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from string import Template

import msgspec
import pytest

from contracts.scoring import ScoreRequest
from gateway.app import create_app
from gateway.deadline import Deadline
from gateway.errors import BadRequest
from gateway.features.assembler import FeatureAssembler, applied_bound
from gateway.features.online_store import StoredValue, lineage_id_for, to_millis
from gateway.http.openapi import staleness_bounds_constrained
from gateway.registry import ModelPlan, parse_registry
from gateway.scoring import Asked, requested_bounds, sent_bound
from gateway.settings import GatewaySettings
from tests.support.keys import API_KEYS
from tests.support.sample import SAMPLE_REGISTRY
from writeback.config import WritebackConfig


def _sample_registry() -> bytes:
    urls = {"sources_url": "http://sources.invalid", "model_url": "http://model.invalid"}
    return Template(SAMPLE_REGISTRY.read_text()).substitute(urls).encode()


@pytest.fixture(scope="module")
def plan() -> ModelPlan:
    return parse_registry(_sample_registry()).plans["fraud"]


@pytest.mark.parametrize(
    ("sla", "requested", "applied"),
    [
        (60_000, None, 60_000),
        (60_000, 10_000, 10_000),
        (60_000, 0, 0),
        (60_000, 60_000, 60_000),
        (60_000, 60_001, 60_000),
        (60_000, 10**30, 60_000),
        (0, 5, 0),
    ],
)
def test_the_bound_applied_is_the_smaller_of_the_sla_and_the_request(
    sla: int, requested: int | None, applied: int
) -> None:
    assert applied_bound(sla, requested) == applied


def test_a_number_bounds_every_stored_feature_and_an_object_the_ones_it_names(
    plan: ModelPlan,
) -> None:
    stored = [feature.name for feature in plan.features]
    assert requested_bounds(plan, None) is None
    assert requested_bounds(plan, 5_000) == dict.fromkeys(stored, 5_000)
    assert requested_bounds(plan, {"kyc_level": 0}) == {"kyc_level": 0}


@pytest.mark.parametrize(
    ("bound", "field", "words"),
    [
        ({"kyc_level": 1, "nope": 1}, "max_staleness_ms.nope", "unknown"),
        ({"card_present": 1}, "max_staleness_ms.card_present", "context feature"),
    ],
)
def test_an_object_naming_anything_but_a_stored_feature_is_refused_by_name(
    plan: ModelPlan, bound: dict[str, int], field: str, words: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        requested_bounds(plan, bound)
    assert refused.value.field == field
    assert words in refused.value.detail


def test_an_empty_object_is_no_bound() -> None:
    def request(bound: object) -> ScoreRequest:
        sent = {"model": "fraud", "entities": {}, "max_staleness_ms": bound}
        return msgspec.convert(sent, ScoreRequest)

    assert sent_bound(request({})) is None
    assert sent_bound(request(None)) is None
    assert sent_bound(request(0)) == 0
    assert sent_bound(request({"kyc_level": 0})) == {"kyc_level": 0}


ASKED = Asked("fraud", {"customer_id": "c-1", "merchant_id": "m-1"}, {"amount": 1.0})


def test_without_a_bound_the_fingerprint_is_the_one_keys_were_committed_with() -> None:
    before = msgspec.json.encode(
        ["fraud", [["customer_id", "c-1"], ["merchant_id", "m-1"]], [["amount", 1.0]]]
    )
    assert ASKED.fingerprint() == hashlib.sha256(before).digest()


def test_every_other_bound_is_another_fingerprint() -> None:
    bounds: Sequence[int | dict[str, int] | None] = [
        None,
        0,
        5_000,
        {"kyc_level": 5_000},
        {"kyc_level": 6_000},
        {"kyc_level": 5_000, "country_risk": 5_000},
    ]
    prints = {ASKED._replace(max_staleness_ms=bound).fingerprint() for bound in bounds}
    assert len(prints) == len(bounds)
    # An object's order is not part of what it asks.
    one = ASKED._replace(max_staleness_ms={"a": 1, "b": 2})
    other = ASKED._replace(max_staleness_ms={"b": 2, "a": 1})
    assert one.fingerprint() == other.fingerprint()
    assert one.differences(other) == []


@pytest.mark.parametrize(
    ("mine", "theirs", "differs"),
    [
        (5_000, 5_000, []),
        (5_000, 6_000, ["max_staleness_ms"]),
        (None, 0, ["max_staleness_ms"]),
        (5_000, {"kyc_level": 5_000}, ["max_staleness_ms"]),
        ({"a": 1, "b": 2}, {"b": 3, "c": 1}, [f"max_staleness_ms.{n}" for n in "abc"]),
    ],
)
def test_differences_name_the_bound_and_each_feature_it_differs_in(
    mine: int | dict[str, int] | None, theirs: int | dict[str, int] | None, differs: list[str]
) -> None:
    earlier = ASKED._replace(max_staleness_ms=mine)
    assert earlier.differences(ASKED._replace(max_staleness_ms=theirs)) == differs


class _Breaker:
    state = "closed"


class _Store:
    """The online store's read, holding one customer's values."""

    def __init__(self, values: dict[str, StoredValue]) -> None:
        self.values = values
        self.breaker = _Breaker()

    async def read(
        self, reads: Sequence[tuple[str, str, Sequence[str]]], deadline: Deadline
    ) -> list[dict[str, StoredValue]]:
        return [{n: v for n, v in self.values.items() if n in names} for _, _, names in reads]


NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

SOURCELESS = b"""
[[entities]]
name = "customer"
key = "customer_id"

[[features]]
name = "txn_count"
entity = "customer"
dtype = "int64"
max_staleness_ms = 1000
on_unavailable = "serve_stale"

[[features]]
name = "segment"
entity = "customer"
dtype = "string"
max_staleness_ms = 1000
on_unavailable = "default"
default = "unknown"

[[models]]
name = "m"
version = "1"
subject = "customer"
endpoint = "http://model.invalid"
features = ["txn_count", "segment"]
input = { layout = "columns" }
"""


def _stored(value: object, age_ms: int) -> StoredValue:
    event_time_ms = to_millis(NOW) - age_ms
    return StoredValue(
        value=value,  # type: ignore[arg-type]
        event_time_ms=event_time_ms,
        ingested_at_ms=event_time_ms,
        lineage_id=lineage_id_for("cdc", "r:1", event_time_ms),
        kind="push",
        source_system="cdc",
        source_ref="r:1",
        schema_version=None,
        transform=None,
    )


async def test_a_value_without_a_source_older_than_the_bound_is_served_by_its_policy() -> None:
    registry = parse_registry(SOURCELESS)
    store = _Store({"txn_count": _stored(7, 500), "segment": _stored("gold", 500)})
    assembler = FeatureAssembler(registry, store, {})  # type: ignore[arg-type]
    plan = registry.plans["m"]

    unbounded = await assembler.assemble(plan, {"customer": "c-1"}, {}, Deadline(5.0), NOW)
    assert [v.status for v in unbounded.values.values()] == ["fresh", "fresh"]
    assert unbounded.problems == {}

    bounds = {"txn_count": 100, "segment": 100}
    bounded = await assembler.assemble(plan, {"customer": "c-1"}, {}, Deadline(5.0), NOW, bounds)
    txn, segment = bounded.values["txn_count"], bounded.values["segment"]
    assert (txn.status, txn.value, txn.source) == ("stale", 7, "online_store")
    assert (segment.status, segment.value) == ("default", "unknown")
    assert (txn.max_staleness_ms, txn.requested_max_staleness_ms) == (1000, 100)
    assert segment.requested_max_staleness_ms == 100
    assert bounded.degraded is True
    assert bounded.problems == dict.fromkeys(
        bounds, "older than the request's max_staleness_ms (100 ms), no source"
    )


def test_the_schema_declares_the_constraints_of_the_bounds_arms(tmp_path: Path) -> None:
    registry = tmp_path / "registry.toml"
    registry.write_bytes(_sample_registry())
    settings = GatewaySettings(
        registry_path=registry,
        redis_url="redis://127.0.0.1:6379",
        redis_prefix="unused",
        writeback=WritebackConfig(
            database_url="postgresql://postgres@127.0.0.1/unused",
            kafka_bootstrap="127.0.0.1:9",
            topic="unused",
        ),
        api_keys=API_KEYS,
        pii_key=b"unused",
    )
    openapi = create_app(settings).openapi_schema
    staleness_bounds_constrained(openapi)

    schema = openapi.to_schema()["components"]["schemas"]["ScoreRequest"]
    number, bounds, null = schema["properties"]["max_staleness_ms"]["oneOf"]
    assert number == {"type": "integer", "minimum": 0}
    assert bounds == {
        "type": "object",
        "additionalProperties": {"type": "integer", "minimum": 0},
        "propertyNames": {"type": "string", "minLength": 1, "maxLength": 128},
        "maxProperties": 256,
    }
    assert null == {"type": "null"}
