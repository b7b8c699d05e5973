"""The served OpenAPI schema, fuzzed by schemathesis against a real gateway over HTTP.

schemathesis runs as its command line does, as a separate process against the
gateway's port: its examples, coverage (boundaries, wrong types, unexpected and
repeated query parameters, missing fields) and fuzzing phases over every operation
in the schema (the auditor's pages are not in it), deterministic (derandomized) and
with a bounded number of examples. Whatever arrives, the gateway answers without a server error and
with a status, content type and body its schema declares. The ``{decision_id}`` and
``{event_id}`` routes are given a real decision and its event, so that they are
reached beyond the 404.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.keys import KEYS
from tests.support.scoring import body, seed

pytestmark = pytest.mark.services

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,"
CHECKS += "response_schema_conformance"
# Enough to reach each parameter's edge cases; few enough for a minute or two on a slow machine.
EXAMPLES = 50


async def test_no_request_breaks_the_gateway_or_its_schema(
    client: httpx.AsyncClient, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed(client, "c-fuzz", "m-fuzz", timedelta(seconds=5))
    scored = await client.post("/score", json=body("c-fuzz", "m-fuzz"))
    assert scored.status_code == 200, scored.text
    decision_id = scored.json()["decision_id"]
    event_id = await pg.fetchval(
        "SELECT event_id FROM outbox WHERE decision_id = $1", uuid.UUID(decision_id)
    )
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f'headers = {{ Authorization = "Bearer {KEYS["admin"]}" }}\n'
        "[parameters]\n"
        f'"path.decision_id" = "{decision_id}"\n'
        f'"path.event_id" = "{event_id}"\n'
        "[phases.coverage]\n"
        "generate-duplicate-query-parameters = true\n"
    )

    run = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        f"{client.base_url}/schema/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(EXAMPLES),
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        "--suppress-health-check",
        "all",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await run.communicate()

    print(output.decode())  # schemathesis's summary, shown with -s
    assert run.returncode == 0, output.decode()
