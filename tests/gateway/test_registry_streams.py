"""The registry's streams: what ingest reads, checked at load, each defect at its path."""

from __future__ import annotations

from string import Template

import pytest

from gateway.registry import RegistryError, parse_registry
from tests.support.sample import SAMPLE_REGISTRY

GOOD = """
[[entities]]
name = "customer"
key = "customer_id"

[[entities]]
name = "merchant"
key = "merchant_id"

[[features]]
name = "kyc_level"
entity = "customer"
dtype = "int64"
max_staleness_ms = 1000

[[features]]
name = "chargeback_rate_90d"
entity = "merchant"
dtype = "float64"
max_staleness_ms = 1000

[[features]]
name = "blocked"
entity = "merchant"
dtype = "bool"
max_staleness_ms = 1000

[[streams]]
name = "customer_features"
topic = "features.customer"
format = "feature_update"
schema_versions = [1, 2]
owner = "customer-data"

[[streams]]
name = "merchant_cdc"
topic = "riskdb.public.merchants"
format = "debezium"

[[streams.tables]]
table = "public.merchants"
entity = "merchant"
key_column = "merchant_id"
columns = { chargeback_rate = { feature = "chargeback_rate_90d", dtype = "float64" } }

[[streams.tables]]
table = "blocklist"
entity = "merchant"
key_column = "id"
[streams.tables.columns]
blocked = { feature = "blocked", dtype = "bool" }
"""


def test_streams_are_indexed_by_topic() -> None:
    registry = parse_registry(GOOD.encode())
    assert set(registry.streams) == {"features.customer", "riskdb.public.merchants"}
    update = registry.streams["features.customer"]
    assert (update.name, update.format, update.schema_versions) == (
        "customer_features",
        "feature_update",
        [1, 2],
    )
    cdc = registry.streams["riskdb.public.merchants"]
    assert [t.table for t in cdc.tables] == ["public.merchants", "blocklist"]
    assert cdc.tables[0].columns["chargeback_rate"].feature == "chargeback_rate_90d"
    assert cdc.schema_versions == [] and cdc.owner == ""


def test_a_registry_without_streams_has_none() -> None:
    registry = parse_registry(GOOD.split("[[streams]]")[0].encode())
    assert registry.streams == {}
    assert registry.file.streams == []


@pytest.mark.parametrize(
    ("old", "new", "path", "message"),
    [
        (
            'name = "merchant_cdc"',
            'name = "customer_features"',
            "$.streams[1].name",
            "duplicate name 'customer_features'",
        ),
        (
            'topic = "riskdb.public.merchants"',
            'topic = "features.customer"',
            "$.streams[1].topic",
            "topic 'features.customer' is stream 'customer_features''s already",
        ),
        (
            'topic = "riskdb.public.merchants"',
            'topic = "features.customer.dlq"',
            "$.streams[1].topic",
            "dead-letter topic of stream 'customer_features'",
        ),
        ('topic = "features.customer"', 'topic = ".."', "$.streams[0].topic", "not a Kafka"),
        ('topic = "features.customer"', 'topic = "a topic"', "$.streams[0].topic", ""),
        ('topic = "features.customer"', f'topic = "{"t" * 246}"', "$.streams[0].topic", ""),
        ('format = "debezium"', 'format = "avro"', "$.streams[1].format", ""),
        (
            "schema_versions = [1, 2]",
            "schema_versions = [-1]",
            "$.streams[0].schema_versions[0]",
            "",
        ),
        (
            'owner = "customer-data"',
            'owner = "customer-data"\npartitions = 3',
            "$.streams[0]",
            "unknown field",
        ),
        (
            'format = "feature_update"',
            'format = "debezium"',
            "$.streams[0].tables",
            "maps at least one table",
        ),
        (
            'format = "debezium"',
            'format = "feature_update"',
            "$.streams[1].tables",
            "has no tables",
        ),
        (
            'format = "debezium"',
            'format = "debezium"\nschema_versions = [1]',
            "$.streams[1].schema_versions",
            "not for a debezium stream",
        ),
        (
            'table = "blocklist"',
            'table = "public.merchants"',
            "$.streams[1].tables[1].table",
            "mapped twice",
        ),
        ('table = "blocklist"', 'table = "a.b.c"', "$.streams[1].tables[1].table", ""),
        (
            'entity = "merchant"\nkey_column = "id"',
            'entity = "shop"\nkey_column = "id"',
            "$.streams[1].tables[1].entity",
            "unknown entity 'shop'",
        ),
        (
            'key_column = "id"',
            'key_column = ""',
            "$.streams[1].tables[1].key_column",
            "",
        ),
        (
            '{ feature = "chargeback_rate_90d"',
            '{ feature = "chargeback_rate_30d"',
            "$.streams[1].tables[0].columns.chargeback_rate.feature",
            "unknown feature 'chargeback_rate_30d'",
        ),
        (
            '{ feature = "chargeback_rate_90d"',
            '{ feature = "kyc_level"',
            "$.streams[1].tables[0].columns.chargeback_rate.feature",
            "belongs to entity 'customer', not 'merchant'",
        ),
        (
            'dtype = "float64" }',
            'dtype = "int64" }',
            "$.streams[1].tables[0].columns.chargeback_rate.dtype",
            "declared int64, but feature 'chargeback_rate_90d' is float64",
        ),
        (
            'dtype = "float64" }',
            'dtype = "decimal" }',
            "$.streams[1].tables[0].columns[...].dtype",
            "",
        ),
        (
            'blocked = { feature = "blocked", dtype = "bool" }',
            'blocked = { feature = "blocked", dtype = "bool" }\n'
            '"is blocked" = { feature = "blocked", dtype = "bool" }',
            '$.streams[1].tables[1].columns["is blocked"].feature',
            "fed by column 'blocked' already",
        ),
        (
            "[streams.tables.columns]\nblocked",
            "[streams.tables.columns]\nblocked = 1\nx",
            "$.streams[1].tables[1].columns[...]",
            "",
        ),
        (
            "columns = { chargeback_rate = { feature",
            "columns = { chargeback_rate = { column",
            "$.streams[1].tables[0].columns[...]",
            "",
        ),
    ],
)
def test_one_defect_names_its_path(old: str, new: str, path: str, message: str) -> None:
    assert old in GOOD
    with pytest.raises(RegistryError) as caught:
        parse_registry(GOOD.replace(old, new, 1).encode(), origin="reg.toml")
    assert caught.value.path == path
    assert message in str(caught.value)
    assert str(caught.value).endswith(f" - at `{path}`")


def test_a_table_with_no_columns_is_refused() -> None:
    text = GOOD.replace(
        'columns = { chargeback_rate = { feature = "chargeback_rate_90d", dtype = "float64" } }',
        "columns = {}",
    )
    with pytest.raises(RegistryError) as caught:
        parse_registry(text.encode())
    assert caught.value.path == "$.streams[1].tables[0].columns"


def test_one_feature_may_be_fed_by_two_tables() -> None:
    # Two sources of one feature are arbitrated by the compare-and-set, not refused.
    text = GOOD.replace(
        'blocked = { feature = "blocked", dtype = "bool" }',
        'rate = { feature = "chargeback_rate_90d", dtype = "float64" }',
    )
    registry = parse_registry(text.encode())
    tables = registry.streams["riskdb.public.merchants"].tables
    assert tables[1].columns["rate"].feature == "chargeback_rate_90d"


def test_the_sample_registry_reads_one_stream_of_each_format() -> None:
    text = Template(SAMPLE_REGISTRY.read_text()).substitute(
        sources_url="http://127.0.0.1:1", model_url="http://127.0.0.1:2"
    )
    registry = parse_registry(text.encode())
    assert registry.streams["features.customer"].format == "feature_update"
    (table,) = registry.streams["riskdb.public.merchants"].tables
    assert (table.table, table.entity, table.key_column) == (
        "public.merchants",
        "merchant",
        "merchant_id",
    )
    assert table.columns["chargeback_rate"].feature == "chargeback_rate_90d"
