"""Pieces of the multi-process fault tests: a steady load, an independent consumer
that counts events by ``ce_id``, and the one-line figures each test prints."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from scoregate_dev.broker import LocalBroker


@pytest.fixture
async def own_broker() -> AsyncIterator[LocalBroker]:
    """A broker of this test's own, started; the test may stop and restart it."""
    local = LocalBroker()
    await local.start()
    yield local
    await local.stop()
