"""Shared pieces of the write-back tests: a decision record factory, its event, and
a pool and audit store on the test's own database.

Each test module provides the ``config`` these fixtures use (the relay tests point
it at the broker; the audit-store tests at nothing).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from scoregate_dev.broker import LocalBroker
from writeback.audit_store import AuditStore
from writeback.config import WritebackConfig
from writeback.pool import create_pool


@pytest.fixture
async def pool(config: WritebackConfig) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's database."""
    pool = await create_pool(config)
    yield pool
    await pool.close()


@pytest.fixture
async def store(pool: asyncpg.Pool, config: WritebackConfig) -> AsyncIterator[AuditStore]:
    """A started audit store."""
    store = AuditStore(pool, config)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
async def own_broker() -> AsyncIterator[LocalBroker]:
    """A broker of this test's own, not started: the test decides when it is up."""
    local = LocalBroker()
    yield local
    await local.stop()
