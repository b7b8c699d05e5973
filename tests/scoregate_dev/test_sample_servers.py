"""Tests of the sample source APIs and the sample OIP v2 model server.

Both apps run under a real uvicorn server on a loopback port, so fault modes such as
``hang`` are observed the way the gateway's HTTP client observes them.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn

from scoregate_dev.sample_model import FEATURES, create_model_app
from scoregate_dev.sample_sources import create_sources_app, profile_record

REPO_ROOT = Path(__file__).resolve().parents[2]

LOW_RISK = [0, 80.0, 4, 1500, 3, 0.1, 0.002, 25.0, 1]
MID_RISK = [2, 300.0, 8, 200, 2, 0.3, 0.01, 120.0, 0]
HIGH_RISK = [9, 2500.0, 22, 5, 1, 0.85, 0.09, 900.0, 0]
ROWS = [LOW_RISK, MID_RISK, HIGH_RISK]
DATATYPES = ["INT64", "FP64", "INT64", "INT64", "INT64", "FP64", "FP64", "FP64", "BOOL"]


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Run an ASGI app under uvicorn on a free loopback port and yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Accepted connections inherit this; without it the default asyncio loop's keep-alive
    # answers stall about 40 ms on Nagle's algorithm and delayed ACKs.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", http="httptools", lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(5):
            while not server.started:
                await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture(scope="module")
async def sources_url() -> AsyncIterator[str]:
    async with serving(create_sources_app(latency_scale=0)) as url:
        yield url


@pytest.fixture(scope="module")
async def model_url() -> AsyncIterator[str]:
    async with serving(create_model_app()) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture
async def sources(sources_url: str, http: aiohttp.ClientSession) -> str:
    """The sources' base URL, with faults and counters reset for this test."""
    for path in ("/_faults", "/_stats"):
        async with http.delete(sources_url + path) as resp:
            assert resp.status == 204
    return sources_url


@pytest.fixture
async def model(model_url: str, http: aiohttp.ClientSession) -> str:
    """The model server's base URL, with its fault and counters reset for this test."""
    for path in ("/_faults", "/_stats"):
        async with http.delete(model_url + path) as resp:
            assert resp.status == 204
    return model_url


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def send_json(
    http: aiohttp.ClientSession, method: str, url: str, body: Any
) -> tuple[int, Any]:
    async with http.request(method, url, json=body) as resp:
        return resp.status, await resp.json()


def tensor_request(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    flat = [value for row in rows for value in row]
    tensor = {"name": "input-0", "shape": [len(rows), 9], "datatype": "FP64", "data": flat}
    return {"inputs": [tensor], **extra}


def column_request(rows: list[list[float]]) -> dict[str, Any]:
    inputs = []
    for j, name in enumerate(FEATURES):
        datatype = DATATYPES[j]
        column = [bool(row[j]) if datatype == "BOOL" else row[j] for row in rows]
        # Mix both accepted column shapes, [N] and [N, 1].
        shape = [len(rows)] if j % 2 else [len(rows), 1]
        inputs.append({"name": name, "shape": shape, "datatype": datatype, "data": column})
    # The server matches columns by name, not position.
    inputs.reverse()
    return {"inputs": inputs}


def probabilities(response: dict[str, Any]) -> list[float]:
    by_name = {output["name"]: output for output in response["outputs"]}
    data: list[float] = by_name["probability"]["data"]
    return data


# Sample sources


SOURCE_PATHS = {
    "customer_profile": "/profile/customers/{}/profile",
    "txn_stats": "/txn/customers/{}/txn-stats",
    "merchant_risk": "/merchant/merchants/{}/risk",
}


async def test_source_values_are_deterministic_and_recent(
    sources: str, http: aiohttp.ClientSession
) -> None:
    stamp_fields = {"event_time", "record_id"}
    for source, path in SOURCE_PATHS.items():
        url = sources + path.format("id-42")
        status, first = await get_json(http, url)
        assert status == 200
        _, second = await get_json(http, url)
        steady = {k: v for k, v in first.items() if k not in stamp_fields}
        assert steady == {k: v for k, v in second.items() if k not in stamp_fields}
        assert first["record_id"].startswith(f"{source}:id-42:")
        event_time = datetime.fromisoformat(first["event_time"])
        assert first["event_time"].endswith("Z")
        assert 0 <= (datetime.now(UTC) - event_time).total_seconds() < 6

    _, profile = await get_json(http, sources + SOURCE_PATHS["customer_profile"].format("id-42"))
    assert profile["customer_id"] == "id-42"
    assert profile["kyc_level"] in (1, 2, 3)
    assert 0 <= profile["country_risk"] <= 1
    assert profile["account_age_days"] >= 1
    _, stats = await get_json(http, sources + SOURCE_PATHS["txn_stats"].format("id-42"))
    assert stats["txn_count_30m"] >= 0 and stats["distinct_merchants_7d"] >= 0
    assert stats["txn_amount_sum_24h"] > 0
    _, merchant = await get_json(http, sources + SOURCE_PATHS["merchant_risk"].format("m-7"))
    assert merchant["merchant_id"] == "m-7"
    assert 0 <= merchant["chargeback_rate_90d"] <= 0.2
    assert 0 <= merchant["category_risk"] <= 1


def test_customer_population_is_mostly_low_risk() -> None:
    now = datetime.now(UTC)
    profiles = [profile_record(f"c-{i}", now) for i in range(1000)]
    new_weak = [p for p in profiles if p.account_age_days < 60 and p.kyc_level == 1]
    assert 0.01 < len(new_weak) / len(profiles) < 0.15
    assert sorted(p.country_risk for p in profiles)[500] < 0.3


async def test_unknown_ids_are_not_found(sources: str, http: aiohttp.ClientSession) -> None:
    for path in SOURCE_PATHS.values():
        assert await get_json(http, sources + path.format("unknown-1")) == (
            404,
            {"error": "not found"},
        )


async def test_error_fault_hits_only_its_source(sources: str, http: aiohttp.ClientSession) -> None:
    status, echo = await send_json(
        http, "PUT", sources + "/_faults/txn_stats", {"mode": "error", "status": 500}
    )
    assert status == 200
    assert echo == {"mode": "error", "latency_ms": 0, "status": 500, "flap_every": 2}
    txn_url = sources + SOURCE_PATHS["txn_stats"].format("c-1")
    assert await get_json(http, txn_url) == (500, {"error": "injected"})
    status, _ = await get_json(http, sources + SOURCE_PATHS["customer_profile"].format("c-1"))
    assert status == 200

    async with http.delete(sources + "/_faults") as resp:
        assert resp.status == 204
    status, _ = await get_json(http, txn_url)
    assert status == 200


async def test_hang_fault_makes_the_client_time_out(
    sources: str, http: aiohttp.ClientSession
) -> None:
    status, _ = await send_json(http, "PUT", sources + "/_faults/merchant_risk", {"mode": "hang"})
    assert status == 200
    url = sources + SOURCE_PATHS["merchant_risk"].format("m-1")
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    assert time.perf_counter() - started < 1


async def test_latency_fault_delays_answers(sources: str, http: aiohttp.ClientSession) -> None:
    await send_json(
        http, "PUT", sources + "/_faults/customer_profile", {"mode": "latency", "latency_ms": 150}
    )
    started = time.perf_counter()
    status, _ = await get_json(http, sources + SOURCE_PATHS["customer_profile"].format("c-1"))
    assert status == 200
    assert time.perf_counter() - started >= 0.15


async def test_flap_fault_fails_every_nth_call(sources: str, http: aiohttp.ClientSession) -> None:
    await send_json(
        http,
        "PUT",
        sources + "/_faults/txn_stats",
        {"mode": "flap", "flap_every": 3, "status": 502},
    )
    url = sources + SOURCE_PATHS["txn_stats"].format("c-1")
    statuses = [(await get_json(http, url))[0] for _ in range(7)]
    assert statuses == [200, 200, 502, 200, 200, 502, 200]


@pytest.mark.parametrize(
    ("source", "body", "expected"),
    [
        ("nope", {"mode": "ok"}, 404),
        ("txn_stats", {"mode": "sometimes"}, 400),
        ("txn_stats", {"mode": "latency", "latency_ms": -1}, 400),
        ("txn_stats", {"mode": "flap", "flap_every": 0}, 400),
        ("txn_stats", {"latency_ms": 5}, 400),
        ("txn_stats", [1, 2], 400),
    ],
)
async def test_bad_fault_requests_are_refused(
    sources: str, http: aiohttp.ClientSession, source: str, body: Any, expected: int
) -> None:
    status, answer = await send_json(http, "PUT", f"{sources}/_faults/{source}", body)
    assert status == expected
    assert "error" in answer


async def test_stats_count_data_calls_only(sources: str, http: aiohttp.ClientSession) -> None:
    await send_json(http, "PUT", sources + "/_faults/merchant_risk", {"mode": "error"})
    for customer in ("c-1", "c-2", "unknown-3"):
        await get_json(http, sources + SOURCE_PATHS["customer_profile"].format(customer))
    await get_json(http, sources + SOURCE_PATHS["merchant_risk"].format("m-1"))
    status, stats = await get_json(http, sources + "/_stats")
    assert status == 200
    assert stats["calls"] == {"customer_profile": 3, "txn_stats": 0, "merchant_risk": 1}
    assert stats["paths"] == {
        "/profile/customers/c-1/profile": 1,
        "/profile/customers/c-2/profile": 1,
        "/profile/customers/unknown-3/profile": 1,
        "/merchant/merchants/m-1/risk": 1,
    }
    async with http.delete(sources + "/_stats") as resp:
        assert resp.status == 204
    _, stats = await get_json(http, sources + "/_stats")
    assert stats == {
        "calls": {"customer_profile": 0, "txn_stats": 0, "merchant_risk": 0},
        "paths": {},
        "targets": {},
    }


# Sample model server


async def test_health_and_metadata(model: str, http: aiohttp.ClientSession) -> None:
    assert await get_json(http, model + "/v2/health/live") == (200, {"live": True})
    assert await get_json(http, model + "/v2/health/ready") == (200, {"ready": True})
    status, server = await get_json(http, model + "/v2")
    assert status == 200 and server["extensions"] == [] and server["name"]
    for path in ("/v2/models/fraud", "/v2/models/fraud/versions/3"):
        status, meta = await get_json(http, model + path)
        assert status == 200
        assert meta["name"] == "fraud" and meta["versions"] == ["3"] and meta["platform"]
        assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 9]}]
        assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
            "probability": [-1, 1],
            "label": [-1, 1],
        }
    for path in ("/v2/models/fraud/ready", "/v2/models/fraud/versions/3/ready"):
        assert await get_json(http, model + path) == (200, {"name": "fraud", "ready": True})
    for path in ("/v2/models/other", "/v2/models/fraud/versions/9", "/v2/models/other/ready"):
        status, answer = await get_json(http, model + path)
        assert status == 404 and "error" in answer


async def test_infer_tensor_batch(model: str, http: aiohttp.ClientSession) -> None:
    status, answer = await send_json(
        http, "POST", model + "/v2/models/fraud/infer", tensor_request(ROWS, id="req-1")
    )
    assert status == 200
    assert answer["model_name"] == "fraud" and answer["model_version"] == "3"
    assert answer["id"] == "req-1"
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["probability"]["shape"] == [3, 1]
    assert outputs["probability"]["datatype"] == "FP64"
    assert outputs["label"]["shape"] == [3, 1]
    assert outputs["label"]["datatype"] == "INT64"
    low, mid, high = outputs["probability"]["data"]
    assert all(0 < p < 1 for p in (low, mid, high))
    assert low < 0.1 < 0.5 < high
    assert low < mid < high
    assert outputs["label"]["data"] == [int(p >= 0.5) for p in (low, mid, high)]


async def test_infer_accepts_nested_single_row_and_versioned_path(
    model: str, http: aiohttp.ClientSession
) -> None:
    url = model + "/v2/models/fraud/versions/3/infer"
    _, flat = await send_json(http, "POST", url, tensor_request(ROWS))
    assert "id" not in flat
    nested = tensor_request(ROWS)
    nested["inputs"][0]["data"] = ROWS
    _, from_nested = await send_json(http, "POST", url, nested)
    assert probabilities(from_nested) == probabilities(flat)

    single = {"inputs": [{"name": "input-0", "shape": [9], "datatype": "FP32", "data": HIGH_RISK}]}
    status, one = await send_json(http, "POST", url, single)
    assert status == 200
    assert one["outputs"][0]["shape"] == [1, 1]
    assert probabilities(one) == pytest.approx(probabilities(flat)[2:])


async def test_infer_column_layout_matches_tensor_layout(
    model: str, http: aiohttp.ClientSession
) -> None:
    url = model + "/v2/models/fraud/infer"
    status, by_columns = await send_json(http, "POST", url, column_request(ROWS))
    assert status == 200, by_columns
    assert by_columns["outputs"][0]["shape"] == [3, 1]
    _, by_tensor = await send_json(http, "POST", url, tensor_request(ROWS))
    assert probabilities(by_columns) == pytest.approx(probabilities(by_tensor))


async def test_large_batches_score_like_small_ones(model: str, http: aiohttp.ClientSession) -> None:
    # 60 rows take the vectorised path, 3 rows the per-row one; both must agree.
    url = model + "/v2/models/fraud/infer"
    _, small = await send_json(http, "POST", url, tensor_request(ROWS))
    _, large = await send_json(http, "POST", url, tensor_request(ROWS * 20))
    assert large["outputs"][0]["shape"] == [60, 1]
    assert probabilities(large) == pytest.approx(probabilities(small) * 20, rel=1e-12)


async def test_outputs_filter(model: str, http: aiohttp.ClientSession) -> None:
    body = tensor_request(ROWS, outputs=[{"name": "label"}])
    status, answer = await send_json(http, "POST", model + "/v2/models/fraud/infer", body)
    assert status == 200
    assert [output["name"] for output in answer["outputs"]] == ["label"]


def _with_tensor(**changes: Any) -> dict[str, Any]:
    body = tensor_request(ROWS)
    body["inputs"][0].update(changes)
    return body


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v2/models/other/infer", tensor_request(ROWS), 404),
        ("/v2/models/fraud/versions/2/infer", tensor_request(ROWS), 404),
        ("/v2/models/fraud/infer", _with_tensor(shape=[1, 8], data=LOW_RISK[:8]), 400),
        ("/v2/models/fraud/infer", _with_tensor(shape=[3, 9], data=LOW_RISK), 400),
        ("/v2/models/fraud/infer", _with_tensor(datatype="BYTES"), 400),
        ("/v2/models/fraud/infer", _with_tensor(datatype="INT64"), 400),
        ("/v2/models/fraud/infer", _with_tensor(data=["x"] * 27), 400),
        ("/v2/models/fraud/infer", _with_tensor(name="features"), 400),
        ("/v2/models/fraud/infer", tensor_request(ROWS, outputs=[{"name": "score"}]), 400),
        ("/v2/models/fraud/infer", {"inputs": []}, 400),
        ("/v2/models/fraud/infer", {"id": "no-inputs"}, 400),
        ("/v2/models/fraud/infer", {"inputs": column_request(ROWS)["inputs"][1:]}, 400),
    ],
)
async def test_infer_refuses_bad_requests(
    model: str, http: aiohttp.ClientSession, path: str, body: Any, expected: int
) -> None:
    status, answer = await send_json(http, "POST", model + path, body)
    assert status == expected
    assert isinstance(answer["error"], str) and answer["error"]


async def test_infer_refuses_malformed_json(model: str, http: aiohttp.ClientSession) -> None:
    async with http.post(model + "/v2/models/fraud/infer", data=b"{not json") as resp:
        assert resp.status == 400
        assert "error" in await resp.json()


async def test_model_faults_and_stats(model: str, http: aiohttp.ClientSession) -> None:
    url = model + "/v2/models/fraud/infer"
    await send_json(http, "PUT", model + "/_faults", {"mode": "error"})
    status, answer = await send_json(http, "POST", url, tensor_request(ROWS))
    assert (status, answer) == (503, {"error": "injected"})
    assert (await get_json(http, model + "/v2/health/ready"))[0] == 503
    assert (await get_json(http, model + "/v2/health/live"))[0] == 200

    await send_json(http, "PUT", model + "/_faults", {"mode": "flap", "flap_every": 2})
    flapping = [(await send_json(http, "POST", url, tensor_request(ROWS)))[0] for _ in range(4)]
    assert flapping == [200, 503, 200, 503]
    assert (await get_json(http, model + "/v2/health/ready"))[0] == 200

    await send_json(http, "PUT", model + "/_faults", {"mode": "hang"})
    with pytest.raises(TimeoutError):
        async with http.post(
            url, json=tensor_request(ROWS), timeout=aiohttp.ClientTimeout(total=0.2)
        ):
            pass

    await send_json(http, "PUT", model + "/_faults", {"mode": "latency", "latency_ms": 100})
    started = time.perf_counter()
    assert (await send_json(http, "POST", url, tensor_request(ROWS)))[0] == 200
    assert time.perf_counter() - started >= 0.1

    status, _ = await send_json(http, "PUT", model + "/_faults", {"mode": "broken"})
    assert status == 400
    # Received calls: 1 error + 4 flap + 1 hang + 1 latency; rows only from the 3 answered.
    assert await get_json(http, model + "/_stats") == (200, {"infer_calls": 7, "rows": 9})


async def test_command_lines_start_both_servers(http: aiohttp.ClientSession) -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    commands = [
        [sys.executable, "-m", "scoregate_dev.sample_sources", "--port", str(ports[0])],
        [sys.executable, "-m", "scoregate_dev.sample_model", "--port", str(ports[1])],
    ]
    procs = [subprocess.Popen(command, cwd=REPO_ROOT, env=env) for command in commands]
    try:
        checks = [
            f"http://127.0.0.1:{ports[0]}/profile/customers/c-1/profile",
            f"http://127.0.0.1:{ports[1]}/v2/health/ready",
        ]
        for url in checks:
            deadline = time.monotonic() + 10
            while True:
                try:
                    status, _ = await get_json(http, url)
                    break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, f"no answer from {url}"
                    await asyncio.sleep(0.05)
            assert status == 200
    finally:
        for proc in procs:
            proc.terminate()
        # uvicorn stops gracefully, then re-raises the signal it caught as its exit status.
        for proc in procs:
            assert await asyncio.to_thread(proc.wait, 10) in (0, -signal.SIGTERM)
