"""`scoregate dlq list|redrive` and `scoregate maintain`, run as processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.records import commit, make_record
from writeback.audit_store import AuditStore
from writeback.config import WritebackConfig
from writeback.pool import create_pool

pytestmark = pytest.mark.services


async def scoregate(database_url: str, *args: str) -> tuple[int, Any, str]:
    env = {
        **os.environ,
        "SCOREGATE_DATABASE_URL": database_url,
        # Read by the settings, not used by these commands.
        "SCOREGATE_REGISTRY": str(Path(__file__)),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, json.loads(out) if out.strip() else None, err.decode()


async def test_dlq_list_and_redrive_from_a_shell(database_url: str, topic: str) -> None:
    config = WritebackConfig(database_url=database_url, kafka_bootstrap="127.0.0.1:9", topic=topic)
    pool = await create_pool(config)
    store = AuditStore(pool, config)
    await store.start()
    try:
        committed = await commit(store, make_record("c-1"))
        event_id = committed.writeback[0].event_id
        await pool.execute(
            "UPDATE outbox SET status = 'dead_lettered', dead_letter_reason = 'non_retriable'"
            " WHERE event_id = $1",
            uuid.UUID(event_id),
        )

        code, page, _ = await scoregate(database_url, "dlq", "list")
        assert code == 0
        assert [item["event_id"] for item in page["items"]] == [event_id]

        code, letter, _ = await scoregate(
            database_url, "dlq", "redrive", event_id, "--actor", "ops-7"
        )
        assert code == 0
        assert (letter["status"], letter["redrives"]) == ("pending", 1)
        code, _, err = await scoregate(database_url, "dlq", "redrive", event_id)
        assert code == 1
        assert "pending, not dead-lettered" in err
        code, _, err = await scoregate(database_url, "dlq", "redrive", str(uuid.uuid4()))
        assert (code, "no event" in err) == (1, True)
        record = await store.get(committed.decision_id)
        assert record is not None
        assert [(e.stage, e.actor) for e in record.timeline][-1] == ("redriven", "ops-7")
    finally:
        await store.close()
        await pool.close()


async def test_maintain_creates_partitions_ahead(database_url: str) -> None:
    code, report, _ = await scoregate(database_url, "maintain")

    assert code == 0
    assert report["skipped"] is False
    conn = await asyncpg.connect(database_url)
    try:
        partitions = await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'decisions'::regclass"
        )
    finally:
        await conn.close()
    # Default partition, this month and three ahead.
    assert partitions >= 5
