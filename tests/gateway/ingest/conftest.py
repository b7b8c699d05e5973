"""An ingest worker's settings for one test: topics, group and key prefix of its own."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contracts.registry import OnlineStoreSpec
from gateway.features.online_store import OnlineStore
from gateway.ingest.worker import IngestSettings
from gateway.settings import GatewaySettings
from tests.support.ingest import Topics

STREAMS = """
[[streams]]
name = "test_updates"
topic = "{updates}"
format = "feature_update"
schema_versions = [1, 2]
owner = "risk-features@example.com"

[[streams]]
name = "test_changes"
topic = "{changes}"
format = "debezium"
owner = "merchant-data@example.com"

[[streams.tables]]
table = "public.merchants"
entity = "merchant"
key_column = "merchant_id"
columns = {{ chargeback_rate = {{ feature = "chargeback_rate_90d", dtype = "float64" }} }}
"""


@pytest.fixture
def topics() -> Topics:
    suffix = uuid.uuid4().hex[:10]
    return Topics(updates=f"updates-{suffix}", changes=f"changes-{suffix}")


@pytest.fixture
def ingest_settings(settings: GatewaySettings, tmp_path: Path, topics: Topics) -> IngestSettings:
    """The worker's settings over the test registry plus the test's two streams."""
    suffix = topics.updates.removeprefix("updates-")
    text = settings.registry_path.read_text()
    # Streams the sample registry names read topics of this test's own too.
    text = re.sub(r'^(topic = ")([^"]+)"', rf'\1\2-{suffix}"', text, flags=re.MULTILINE)
    path = tmp_path / "ingest-registry.toml"
    path.write_text(text + STREAMS.format(updates=topics.updates, changes=topics.changes))
    return IngestSettings(
        registry_path=path,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        kafka=settings.writeback,
        group_id=f"ingest-{suffix}",
        batch_size=100,
        poll_timeout_ms=50,
    )


@pytest.fixture
async def online(ingest_settings: IngestSettings) -> AsyncIterator[OnlineStore]:
    """The online store the worker writes, for reading back what it holds."""
    store = OnlineStore.from_url(
        ingest_settings.redis_url, ingest_settings.redis_prefix, OnlineStoreSpec(), 4
    )
    yield store
    await store.close()
