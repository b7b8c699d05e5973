"""The HTTP server under the gateway: uvicorn (what ``scoregate serve`` runs) against granian.

Both run the same ASGI apps with uvloop, one worker pinned to core 0, the load on
core 1, in alternating rounds (uvicorn first in even rounds, granian first in odd ones),
each server started afresh for its turn and stopped with SIGTERM after it:

- **echo**: the bare Litestar + msgspec echo (``echo_app.py``), the same body as ``/score``;
- **gateway**: the real ``POST /score`` on the dev stack (``scoregate_dev.stack.DevStack``:
  sample sources and model, the broker, the ingest worker, a database and Redis prefix
  of the run's own). The stack is started once and seeded; its own gateway is stopped,
  and each turn starts a gateway with the stack's environment, as ``scoregate serve``
  (uvicorn with uvloop and httptools) or as ``granian --interface asgi --loop uvloop
  --factory gateway.asgi:app_from_env``.

Each turn: a short unmeasured warm-up, ``wrk`` closed loop (N connections, a Lua script
that builds each body as ``traffic.score_body`` does, with a fresh ``request_id``) for
throughput at saturation and the server's CPU per request (its process tree, from
``/proc``, until the outbox is drained), then ``open_loop.run_phase`` at a fixed rate
for p50 / p99. For the gateway, every answered decision is checked to be audited.
On a core that other processes share, throughput follows the server's share of the
core as much as its cost, and granian's busy threads (the Python loop, the Rust I/O
runtime, a dispatch thread) get more of it than uvicorn's one: ``ok_per_core_s``,
answers per CPU-second of the server, is the figure for a core of its own.

``--part checks`` compares what each server does beyond speed, on a raw ASGI probe app
(``servers:probe_app``) and on the gateway: lifespan startup and shutdown, a startup
that fails, SIGTERM with a request in flight and under load, response headers and the
scope, a body over Litestar's limit, a large header, keep-alive and its idle timeout,
HTTP/1.1 pipelining, the listen backlog, two workers and a killed worker (``--part
probe``: the probe app's checks alone, without the stack).

    /tmp/granenv/bin/python loadtests/servers.py                 # everything, ~9 minutes
    /tmp/granenv/bin/python loadtests/servers.py --part echo --rounds 3 --seconds 10

It needs an environment with granian installed beside the project (a scratch venv:
granian is not a dependency of scoregate). Writes ``loadtests/results/servers-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from benchmark import ScoreTraffic, drop_keys, fresh_database
from cpu_meter import CpuMeter, pids_serving, pin, process_tree
from integrity import committed_decisions, wait_delivered
from open_loop import run_phase
from traffic import MERCHANTS

from gateway.auth import key_from_secret
from scoregate_dev.broker import free_port, wait_for_port
from scoregate_dev.stack import DevStack

HERE = Path(__file__).parent
RESULTS = HERE / "results"
DATABASE = "postgresql://postgres@127.0.0.1:5432/scoregate_servers"
SERVERS = ("uvicorn", "granian")
SERVER_CORE = 0
LOAD_CORE = 1
BIG_BODY = 12_000_000
"""Over Litestar's default ``request_max_body_size`` (10 MB)."""

WRK_SCRIPT = r"""
-- POST bodies shaped as traffic.score_body builds them.
-- Arguments: request-id prefix, customers, merchants.
local prefix, customers, merchants, counter = "wrk", 500, 20, 0
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"

function init(args)
  prefix = args[1] or prefix
  customers = tonumber(args[2]) or customers
  merchants = tonumber(args[3]) or merchants
  math.randomseed(os.time())
end

local function gauss()
  local u1, u2 = math.random(), math.random()
  return math.sqrt(-2 * math.log(1 - u1)) * math.cos(2 * math.pi * u2)
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"model":"fraud","entities":{"customer_id":"c-%d","merchant_id":"m-%d"},'
      .. '"context":{"amount":%.2f,"card_present":%s},"request_id":"%s%d"}',
    math.random(1, customers), math.random(1, merchants), math.exp(3.5 + 1.1 * gauss()),
    math.random() < 0.4 and "true" or "false", prefix, counter)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\n{"requests":%d,"duration_us":%d,"non_2xx":%d,"connect":%d,"read":%d,"write":%d,'
      .. '"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


# --- the probe app: what a server hands an ASGI app, and when -------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _mark(event: str) -> None:
    marks = os.environ.get("PROBE_MARKS")
    if marks:
        with open(marks, "a") as out:
            out.write(f"{event} {os.getpid()}\n")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if os.environ.get("PROBE_FAIL_STARTUP"):
                _mark("startup-failed")
                await send({"type": "lifespan.startup.failed", "message": "refused on purpose"})
                return
            _mark("startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.sleep(0.2)  # shutdown work that takes a while, as a flush does
            _mark("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def probe_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A raw ASGI app: ``/slow?<s>`` answers after s seconds, ``/body`` counts what it
    read, anything else describes the scope; the lifespan is marked in ``$PROBE_MARKS``."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    answer: dict[str, Any]
    if scope["path"] == "/slow":
        await asyncio.sleep(float(scope["query_string"] or b"1"))
        answer = {"slept": True}
    elif scope["path"] == "/body":
        size = chunks = largest = 0
        more = True
        while more:
            message = await receive()
            body = message.get("body", b"")
            size, chunks, largest = size + len(body), chunks + 1, max(largest, len(body))
            more = message.get("more_body", False)
        answer = {"bytes": size, "chunks": chunks, "largest_chunk": largest}
    else:
        answer = {
            "asgi": scope.get("asgi"),
            "http_version": scope.get("http_version"),
            "scheme": scope.get("scheme"),
            "server": scope.get("server"),
            "client_is_pair": isinstance(scope.get("client"), list | tuple),
            "root_path": scope.get("root_path"),
            "raw_path": scope.get("raw_path", b"").decode(),
            "has_state": "state" in scope,
            "extensions": sorted(scope.get("extensions") or {}),
            "headers": [[k.decode(), v.decode()[:40]] for k, v in scope["headers"]],
        }
    data = json.dumps(answer).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": data})


# --- starting and stopping a server ---------------------------------------------------------


def command(
    server: str, app: str, port: int, workers: int = 1, extra: tuple[str, ...] = ()
) -> list[str]:
    """The command line that serves ``app`` (echo, gateway, probe) with ``server``;
    ``extra`` goes before the app (server options)."""
    py = sys.executable
    if app == "gateway" and server == "uvicorn":
        # What runs in production today, exactly.
        return [py, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", str(workers)]
    target = {
        "echo": "echo_app:app",
        "gateway": "gateway.asgi:app_from_env",
        "probe": "servers:probe_app",
    }[app]
    factory = ["--factory"] if app == "gateway" else []
    common = ["--no-access-log", "--log-level", "warning", "--port", str(port), *extra]
    if server == "uvicorn":
        return [
            *[py, "-m", "uvicorn", "--app-dir", str(HERE), target, *factory],
            *["--loop", "uvloop", "--http", "httptools", "--workers", str(workers), *common],
        ]
    return [
        *[py, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", *factory],
        *["--working-dir", str(HERE), "--host", "127.0.0.1", "--workers", str(workers)],
        *common,
        target,
    ]


SPAWNED: list[Served] = []
"""Every server started, so that a run that breaks stops them all the same."""


@dataclass
class Served:
    """One server process serving one app, pinned, its output in a log file."""

    server: str
    app: str
    logs: Path
    env: dict[str, str] | None = None
    workers: int = 1
    cpus: str | None = str(SERVER_CORE)
    extra: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's pid (``taskset`` execs it)."""
        assert self.process is not None
        return self.process.pid

    @property
    def log(self) -> Path:
        """Where its output goes."""
        return self.logs / f"{self.app}-{self.server}-{self.port}.log"

    async def spawn(self) -> asyncio.subprocess.Process:
        """Start the process, waiting for nothing."""
        prefix = ["taskset", "-c", self.cpus] if self.cpus else []
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *prefix,
                *command(self.server, self.app, self.port, self.workers, self.extra),
                stdout=log,
                stderr=log,
                env=self.env,
            )
        SPAWNED.append(self)
        return self.process

    async def start(self, ready: str | None = None, limit_s: float = 30.0) -> float:
        """Start it and wait until it accepts connections (and ``ready`` answers 200);
        returns the seconds that took."""
        started = time.perf_counter()
        await self.spawn()
        await wait_for_port("127.0.0.1", self.port, limit_s)
        if ready is not None:
            await until_ready(f"{self.url}{ready}", limit_s)
        return time.perf_counter() - started

    async def stop(self, limit_s: float = 30.0) -> dict[str, Any]:
        """SIGTERM and wait; the exit code and how long it took (killed past the limit)."""
        if self.process is None or self.process.returncode is not None:
            return {"exit_code": self.process.returncode if self.process else None}
        started = time.perf_counter()
        self.process.terminate()
        killed = False
        try:
            async with asyncio.timeout(limit_s):
                await self.process.wait()
        except TimeoutError:
            killed = True
            for pid in reversed(process_tree(self.process.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await self.process.wait()
        return {
            "exit_code": self.process.returncode,
            "stop_s": round(time.perf_counter() - started, 2),
            "killed": killed,
        }


async def until_ready(url: str, limit_s: float) -> None:
    """Wait until ``url`` answers 200 (a gateway's ``/health/ready``: every breaker closed
    but the sources', which may stay open for want of calls)."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(limit_s):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        state = await response.json(content_type=None)
                        breakers = state.get("breakers", {}) if isinstance(state, dict) else {}
                        if all(
                            v == "closed"
                            for k, v in breakers.items()
                            if not k.startswith("source:")
                        ):
                            return
            await asyncio.sleep(0.1)


# --- load -----------------------------------------------------------------------------------


@dataclass
class Target:
    """An endpoint under load, whose server's process tree is charged with its CPU."""

    url: str
    pid: int
    customers: int
    headers: dict[str, str] = field(default_factory=dict)
    database: str | None = None
    """The gateway's database: drained after each phase, its backends kept on core 1."""
    caller: str | None = None


async def wrk(
    target: Target, script: Path, seconds: float, connections: int, prefix: str
) -> dict[str, Any]:
    """One wrk run (one thread, on the load core); its ``done`` figures."""
    headers = [arg for k, v in target.headers.items() for arg in ("-H", f"{k}: {v}")]
    process = await asyncio.create_subprocess_exec(
        *["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{connections}"],
        *[f"-d{seconds:g}s", "--timeout", "5s", "-s", str(script), *headers, target.url],
        *["--", prefix, str(target.customers), str(MERCHANTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await process.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err.decode()}{out.decode()}")
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


def _meter(target: Target) -> CpuMeter:
    if target.database is not None:
        # The pool may have opened connections since; each is a new backend.
        pin(pids_serving(target.database.rsplit("/", 1)[1]), {LOAD_CORE})
    return CpuMeter(trees={"server": target.pid}, single={"load generator": os.getpid()})


async def _audited(target: Target, prefix: str) -> int | None:
    if target.database is None or target.caller is None:
        return None
    await wait_delivered(target.database, 60)
    return len(await committed_decisions(target.database, target.caller, prefix))


async def saturate(
    target: Target, script: Path, seconds: float, connections: int, prefix: str
) -> dict[str, Any]:
    """wrk at saturation: answers a second, latency, the server's CPU per answer (until
    the work the requests left, the outbox events, is done), every 200 audited."""
    meter = _meter(target)
    before, started = meter.read(), time.perf_counter()
    figures = await wrk(target, script, seconds, connections, prefix)
    loaded, wall = meter.read(), time.perf_counter() - started
    audited = await _audited(target, prefix)
    after = meter.read()
    answered = figures["requests"]
    ok = answered - figures["non_2xx"]
    cpu_s = CpuMeter.seconds(before, after, "server")
    loaded_s = CpuMeter.seconds(before, loaded, "server")
    return {
        "answered": answered,
        "ok": ok,
        "socket_errors": sum(figures[k] for k in ("connect", "read", "write", "timeout")),
        "ok_per_s": round(ok / (figures["duration_us"] / 1e6), 1),
        # What one core of its own would serve: on a shared core, a server's share of
        # it (more threads, a larger share) sets its throughput as much as its cost does.
        "ok_per_core_s": round(ok / loaded_s, 1) if loaded_s else None,
        "p50_ms": round(figures["p50_us"] / 1000, 2),
        "p99_ms": round(figures["p99_us"] / 1000, 2),
        "cpu_ms_per_request": round(cpu_s / answered * 1000, 4) if answered else None,
        "server_core_share": round(loaded_s / wall, 3),
        "cores_busy": meter.report(before, loaded, wall)["cores_busy"],
        "audited": audited,
    }


async def paced(
    session: aiohttp.ClientSession, target: Target, rate: float, seconds: float, prefix: str
) -> dict[str, Any]:
    """Open loop at ``rate``: latency from the scheduled send, CPU per request."""
    meter = _meter(target)
    traffic = ScoreTraffic(prefix, target.customers, collect=False)
    before = meter.read()
    result = await run_phase(
        session, target.url, "paced", rate, seconds, traffic.body, headers=target.headers
    )
    audited = await _audited(target, prefix)
    after = meter.read()
    summary = result.summary()
    answered = sum(result.statuses.values())
    cpu_s = CpuMeter.seconds(before, after, "server")
    return {
        "ok": summary["ok"],
        "error_rate": summary["error_rate"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "max_ms": summary["max_ms"],
        "cpu_ms_per_request": round(cpu_s / answered * 1000, 4) if answered else None,
        "audited": audited,
    }


@dataclass
class Settings:
    """How long and how hard each turn runs."""

    rounds: int
    seconds: float
    warmup_s: float
    connections: int
    rate: float
    customers: int
    logs: Path
    script: Path
    run: str


Make = Callable[[str], Served]
"""A server (by name) ready to start, for one turn."""


async def one_turn(
    session: aiohttp.ClientSession,
    served: Served,
    target_for: Callable[[Served], Target],
    ready: str | None,
    settings: Settings,
    tag: str,
) -> dict[str, Any]:
    """Start the server, warm it up, saturate it, pace it, stop it."""
    script, connections = settings.script, settings.connections
    turn: dict[str, Any] = {"load_average": os.getloadavg()[0]}
    try:
        turn["start_s"] = round(await served.start(ready), 2)
        target = target_for(served)
        await wrk(target, script, settings.warmup_s, connections, f"{tag}warm-")
        turn["saturated"] = await saturate(
            target, script, settings.seconds, connections, f"{tag}wrk-"
        )
        if ready is not None:
            await until_ready(f"{served.url}{ready}", 60)
        turn["paced"] = await paced(
            session, target, settings.rate, settings.seconds, f"{tag}paced-"
        )
    finally:
        turn["stop"] = await served.stop()
    return turn


async def compare(
    app: str,
    make: Make,
    ready: str | None,
    settings: Settings,
    target_for: Callable[[Served], Target],
) -> dict[str, Any]:
    """Alternating rounds of both servers on one app, uvicorn first in even rounds."""
    turns: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024)) as session:
        for number in range(settings.rounds):
            for server in SERVERS if number % 2 == 0 else tuple(reversed(SERVERS)):
                tag = f"srv-{settings.run}-{app}-{server}-{number}-"
                turn = await one_turn(session, make(server), target_for, ready, settings, tag)
                turn["round"] = number
                turns[server].append(turn)
                print(f"{app} round {number} {server}: {json.dumps(_brief(turn))}", flush=True)
    medians = {name: _medians(rows) for name, rows in turns.items()}
    return {"turns": turns, "median": medians, "granian_vs_uvicorn": _ratios(medians)}


def _brief(turn: dict[str, Any]) -> dict[str, Any]:
    s, p = turn["saturated"], turn["paced"]
    return {
        "ok/s": s["ok_per_s"],
        "cpu ms/req": s["cpu_ms_per_request"],
        "wrk p50": s["p50_ms"],
        "paced p50/p99": [p["p50_ms"], p["p99_ms"]],
        "paced cpu ms/req": p["cpu_ms_per_request"],
        "server core share": s["server_core_share"],
        "audited/ok": [s["audited"], s["ok"]] if s["audited"] is not None else None,
        "load": turn["load_average"],
    }


FIGURES = {
    "ok_per_s": ("saturated", "ok_per_s"),
    "ok_per_core_s": ("saturated", "ok_per_core_s"),
    "server_core_share": ("saturated", "server_core_share"),
    "cpu_ms_per_request": ("saturated", "cpu_ms_per_request"),
    "wrk_p50_ms": ("saturated", "p50_ms"),
    "wrk_p99_ms": ("saturated", "p99_ms"),
    "paced_p50_ms": ("paced", "p50_ms"),
    "paced_p99_ms": ("paced", "p99_ms"),
    "paced_cpu_ms_per_request": ("paced", "cpu_ms_per_request"),
    "start_s": (None, "start_s"),
}


def _medians(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, (part, key) in FIGURES.items():
        values = [(row[part] if part else row)[key] for row in rows]
        present = [v for v in values if v is not None]
        out[name] = round(statistics.median(present), 4) if present else None
    errors = [
        row["saturated"]["socket_errors"] + row["saturated"]["answered"] - row["saturated"]["ok"]
        for row in rows
    ]
    out["saturated_failures"] = sum(errors)
    out["unaudited_ok"] = sum(
        max(0, part["ok"] - part["audited"])
        for row in rows
        for part in (row["saturated"], row["paced"])
        if part["audited"] is not None
    )
    return out


def _ratios(medians: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    uv, gr = medians["uvicorn"], medians["granian"]
    return {
        key: round(g / u, 3) if (u := uv.get(key)) and (g := gr.get(key)) is not None else None
        for key in FIGURES
    }


# --- the two comparisons --------------------------------------------------------------------


async def echo_part(settings: Settings) -> dict[str, Any]:
    """The bare echo under both servers."""

    def target_for(served: Served) -> Target:
        return Target(f"{served.url}/echo", served.pid, settings.customers)

    return await compare(
        "echo", lambda server: Served(server, "echo", settings.logs), None, settings, target_for
    )


@contextlib.asynccontextmanager
async def dev_stack(settings: Settings, database_url: str) -> Any:
    """The dev stack, seeded, with its own gateway stopped: its environment is what each
    turn's gateway gets."""
    os.environ["SCOREGATE_DATABASE_URL"] = database_url
    os.environ["SCOREGATE_REDIS_PREFIX"] = f"servers-{settings.run}"
    os.environ.setdefault("SCOREGATE_PII_KEY", uuid.uuid4().hex)
    await fresh_database(database_url)
    stack = DevStack(port=free_port(), customers=settings.customers, gateway_cpus=str(SERVER_CORE))
    try:
        await stack.start()
        print(f"dev stack up, seeded {await stack.seed()}; logs in {stack.logs}", flush=True)
        gateway = stack.gateway_pid
        assert gateway is not None
        os.kill(gateway, signal.SIGTERM)
        async with asyncio.timeout(30):
            while _alive(gateway):  # noqa: ASYNC110 - another process's state
                await asyncio.sleep(0.1)
        yield stack
    finally:
        await stack.stop()
        await drop_keys(f"servers-{settings.run}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def gateway_part(settings: Settings, stack: DevStack) -> dict[str, Any]:
    """``POST /score`` under both servers, on the same stack."""
    scorer = stack.keys["scorer"]
    caller = key_from_secret(scorer, ["scorer"]).key_id
    database = stack.env["SCOREGATE_DATABASE_URL"]

    def target_for(served: Served) -> Target:
        headers = {"Authorization": f"Bearer {scorer}"}
        return Target(
            f"{served.url}/score", served.pid, settings.customers, headers, database, caller
        )

    def make(server: str) -> Served:
        return Served(server, "gateway", settings.logs, env=dict(stack.env))

    return await compare("gateway", make, "/health/ready", settings, target_for)


# --- behaviour beyond speed ----------------------------------------------------------------


async def raw_exchange(port: int, payload: bytes, wait_s: float = 1.5) -> bytes:
    """Send ``payload`` on a new connection and read whatever comes within ``wait_s``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await _read_for(reader, wait_s)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _read_for(reader: asyncio.StreamReader, wait_s: float) -> bytes:
    data = b""
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):
                data += chunk
    return data


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{extra}\r\n".encode()


def _status_lines(data: bytes) -> list[str]:
    # A response with a content-length ends with its body: the next status line follows
    # it on the same "line".
    return [match.decode() for match in re.findall(rb"HTTP/1\.[01] \d{3}[^\r]*", data)]


async def keep_alive(port: int, idle_s: float) -> dict[str, Any]:
    """Two requests on one connection, then one more after ``idle_s`` of silence."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers: list[str] = []
    try:
        for _ in range(2):
            writer.write(_get("/scope"))
            await writer.drain()
            answers += _status_lines(await _read_for(reader, 0.5))
        await asyncio.sleep(idle_s)
        closed_by_server = reader.at_eof()
        try:
            writer.write(_get("/scope"))
            await writer.drain()
            after_idle = _status_lines(await _read_for(reader, 0.5))
        except OSError as exc:
            after_idle = [type(exc).__name__]
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return {
        "two_on_one_connection": answers,
        f"closed_after_{idle_s:g}s_idle": closed_by_server,
        "after_idle": after_idle or ["no answer (closed)"],
    }


def _backlog(port: int) -> int | None:
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return int(out[2]) if len(out) > 2 else None


def _marks(path: Path) -> list[str]:
    """The lifespan events the probe marked, in order."""
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def _first_pid(path: Path) -> int:
    """The process that marked the first event."""
    return int(path.read_text().split()[1])


def _clear(path: Path) -> None:
    path.unlink(missing_ok=True)


async def probe_checks(server: str, logs: Path) -> dict[str, Any]:
    """Everything the raw probe app shows of one server."""
    marks = logs / f"marks-{server}"
    env = {**os.environ, "PROBE_MARKS": str(marks)}
    found: dict[str, Any] = {}
    served = Served(server, "probe", logs, env=env)
    await served.start()
    found["lifespan_before_serving"] = _marks(marks)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{served.url}/scope", headers={"X-Dup": "a"}) as response:
            found["response_headers"] = sorted(response.headers)
            found["server_header"] = response.headers.get("server")
            found["scope"] = await response.json()
        big = b"x" * BIG_BODY
        async with session.post(f"{served.url}/body", data=big) as response:
            found["12MB_body_read_by_app"] = await response.json()
    duplicate = await raw_exchange(served.port, _get("/scope", "x-dup: a\r\nx-dup: b\r\n"))
    found["duplicate_header_kept"] = duplicate.count(b'["x-dup"') == 2
    for size in (8_000, 64_000, 512_000):
        answer = await raw_exchange(served.port, _get("/scope", f"x-big: {'y' * size}\r\n"))
        found[f"header_{size // 1000}kB"] = _status_lines(answer)[:1] or ["closed, no answer"]
    found["keep_alive"] = await asyncio.gather(
        keep_alive(served.port, 6), keep_alive(served.port, 31)
    )
    pipelined = await raw_exchange(served.port, _get("/scope") * 3 + _get("/slow?0.2"), 2.0)
    found["pipelined_4_answers"] = _status_lines(pipelined)
    found["backlog"] = _backlog(served.port)
    # SIGTERM with a request in flight: answered, then the lifespan shutdown.
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(f"{served.url}/slow?2"))
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(served.stop())
        await asyncio.sleep(0.3)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.close()
            found["new_connection_while_stopping"] = "accepted"
        except OSError as exc:
            found["new_connection_while_stopping"] = type(exc).__name__
        try:
            response = await slow
            found["in_flight_at_sigterm"] = f"{response.status} {await response.text()}"
        except aiohttp.ClientError as exc:
            found["in_flight_at_sigterm"] = repr(exc)
        found["stop"] = await stopping
    found["lifespan_marks"] = _marks(marks)
    found["startup_failure"] = await _attempt(_failed_startup(server, logs, marks))
    found["two_workers"] = await _attempt(_two_workers(server, logs, marks))
    if server == "granian":
        found["two_workers_respawning"] = await _attempt(
            _two_workers(server, logs, marks, ("--respawn-failed-workers",))
        )
    return found


async def _attempt(check: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """A check's findings, or what broke it (the other checks go on)."""
    try:
        return await check
    except Exception as exc:  # a broken check is a finding too
        return {"error": repr(exc)}


async def failing_start(served: Served, limit_s: float = 20.0) -> dict[str, Any]:
    """Start a server whose lifespan startup fails: does it take connections, does it
    exit, with what code, how soon."""
    started = time.perf_counter()
    process = await served.spawn()
    exited = asyncio.ensure_future(process.wait())
    listening = asyncio.ensure_future(wait_for_port("127.0.0.1", served.port, limit_s))
    await asyncio.wait({exited, listening}, return_when=asyncio.FIRST_COMPLETED)
    accepted = listening.done() and not listening.cancelled() and listening.exception() is None
    listening.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(exited), limit_s)
    result: dict[str, Any] = {
        "accepted_connections": accepted,
        "exit_code": process.returncode,
        "exit_s": round(time.perf_counter() - started, 2) if exited.done() else None,
    }
    if not exited.done():
        result["stop"] = await served.stop()
    return result


async def _failed_startup(server: str, logs: Path, marks: Path) -> dict[str, Any]:
    _clear(marks)
    env = {**os.environ, "PROBE_MARKS": str(marks), "PROBE_FAIL_STARTUP": "1"}
    result = await failing_start(Served(server, "probe", logs, env=env))
    result["marks"] = _marks(marks)
    return result


async def _startups(marks: Path, count: int, limit_s: float) -> int:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            while _marks(marks).count("startup") < count:  # noqa: ASYNC110 - a file others write
                await asyncio.sleep(0.1)
    return _marks(marks).count("startup")


async def _two_workers(
    server: str, logs: Path, marks: Path, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Two workers: a lifespan in each; one killed with SIGKILL: replaced or not."""
    _clear(marks)
    env = {**os.environ, "PROBE_MARKS": str(marks)}
    served = Served(server, "probe", logs, env=env, workers=2, cpus=None, extra=extra)
    await served.start(limit_s=60)
    result: dict[str, Any] = {"options": list(extra), "startups": await _startups(marks, 2, 60)}
    result["processes"] = len(process_tree(served.pid))
    victim = _first_pid(marks)
    os.kill(victim, signal.SIGKILL)
    result["startups_within_30s_of_killing_one"] = await _startups(marks, 3, 30)
    async with aiohttp.ClientSession() as session:
        answered = 0
        for _ in range(10):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{served.url}/scope") as response:
                    answered += response.status == 200
    result["answered_of_10_after"] = answered
    result["stop"] = await served.stop()
    result["shutdowns"] = _marks(marks).count("shutdown")
    return result


async def gateway_checks(server: str, stack: DevStack, settings: Settings) -> dict[str, Any]:
    """The real gateway: a body over the limit, SIGTERM under load, a failing startup."""
    found: dict[str, Any] = {}
    scorer = stack.keys["scorer"]
    headers = {"Authorization": f"Bearer {scorer}", "content-type": "application/json"}
    served = Served(server, "gateway", settings.logs, env=dict(stack.env))
    await served.start("/health/ready")
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(
                f"{served.url}/score", data=b" " * BIG_BODY, headers=headers
            ) as response:
                found["12MB_score_body"] = f"{response.status} {(await response.text())[:120]}"
        except aiohttp.ClientError as exc:
            found["12MB_score_body"] = repr(exc)

        # Chunked, so no content-length to refuse it by: the limit counts what is read.
        async def chunks() -> Any:
            for _ in range(BIG_BODY // 1_000_000):
                yield b" " * 1_000_000

        try:
            async with session.post(
                f"{served.url}/score", data=chunks(), headers=headers
            ) as response:
                found["12MB_chunked_score_body"] = (
                    f"{response.status} {(await response.text())[:120]}"
                )
        except aiohttp.ClientError as exc:
            found["12MB_chunked_score_body"] = repr(exc)
    # SIGTERM in the middle of a wrk run: every 200 it got must be audited.
    target = Target(
        f"{served.url}/score", served.pid, settings.customers, {"Authorization": f"Bearer {scorer}"}
    )
    prefix = f"srv-{settings.run}-sigterm-{server}-"
    load = asyncio.create_task(wrk(target, settings.script, 4, settings.connections, prefix))
    await asyncio.sleep(2)
    found["stop_under_load"] = await served.stop()
    try:
        figures = await load
        ok = figures["requests"] - figures["non_2xx"]
        found["under_load"] = {
            "ok": ok,
            "socket_errors": figures["connect"]
            + figures["read"]
            + figures["write"]
            + figures["timeout"],
        }
    except RuntimeError as exc:
        ok = None
        found["under_load"] = {"wrk": str(exc)[:200]}
    database = stack.env["SCOREGATE_DATABASE_URL"]
    caller = key_from_secret(scorer, ["scorer"]).key_id
    found["under_load"]["audited"] = len(await committed_decisions(database, caller, prefix))
    # A startup that fails: PostgreSQL where nothing listens.
    env = {
        **stack.env,
        "SCOREGATE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
    }
    found["failing_startup"] = await failing_start(
        Served(server, "gateway", settings.logs, env=env)
    )
    return found


async def checks_part(settings: Settings, stack: DevStack | None) -> dict[str, Any]:
    """Both servers' behaviour, side by side."""
    found: dict[str, Any] = {}
    for server in SERVERS:
        found[server] = {"probe": await _attempt(probe_checks(server, settings.logs))}
        if stack is not None:
            found[server]["gateway"] = await _attempt(gateway_checks(server, stack, settings))
        print(f"checks {server}: {json.dumps(found[server])}", flush=True)
    return found


# --- main -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part",
        default="echo,gateway,checks",
        help="echo, gateway, checks (probe: the probe app's checks alone, no stack)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="wrk, unmeasured, per turn")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop rate")
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--database-url", default=DATABASE, help="dropped first")
    return parser


def _print_table(results: dict[str, Any]) -> None:
    for app in ("echo", "gateway"):
        if app not in results:
            continue
        medians, ratios = results[app]["median"], results[app]["granian_vs_uvicorn"]
        print(f"\n== {app}: medians of {len(results[app]['turns']['uvicorn'])} rounds")
        print(f"{'figure':<28}{'uvicorn':>12}{'granian':>12}{'granian/uvicorn':>18}")
        for key in FIGURES:
            uv, gr = medians["uvicorn"][key], medians["granian"][key]
            print(f"{key:<28}{uv!s:>12}{gr!s:>12}{ratios[key]!s:>18}")
        for key in ("saturated_failures", "unaudited_ok"):
            print(f"{key:<28}{medians['uvicorn'][key]!s:>12}{medians['granian'][key]!s:>12}")


async def main() -> None:
    """Run the chosen parts and write the report."""
    args = _parser().parse_args()
    parts = set(args.part.split(","))
    everything = os.sched_getaffinity(0)
    if not {SERVER_CORE, LOAD_CORE} <= everything:
        raise SystemExit(f"needs cores {SERVER_CORE} and {LOAD_CORE}")
    # Children inherit this: the stack's sources, model server, broker and ingest worker.
    os.sched_setaffinity(0, everything - {SERVER_CORE})
    run = uuid.uuid4().hex[:6]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = Path(tempfile.mkdtemp(prefix="scoregate-servers-"))
    script = logs / "score.lua"
    script.write_text(WRK_SCRIPT)
    settings = Settings(
        args.rounds,
        args.seconds,
        args.warmup,
        args.connections,
        args.rate,
        args.customers,
        logs,
        script,
        run,
    )
    print(f"logs in {logs}; load average {os.getloadavg()}", flush=True)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "settings": {k: str(v) for k, v in vars(settings).items()},
        "load_average_before": os.getloadavg(),
    }
    started = time.perf_counter()
    results: dict[str, Any] = {}
    try:
        if "echo" in parts:
            results["echo"] = await echo_part(settings)
        if parts & {"gateway", "checks"}:
            async with dev_stack(settings, args.database_url) as stack:
                if "gateway" in parts:
                    results["gateway"] = await gateway_part(settings, stack)
                if "checks" in parts:
                    results["checks"] = await checks_part(settings, stack)
        elif "probe" in parts:
            results["checks"] = await checks_part(settings, None)
    finally:
        for served in SPAWNED:
            await served.stop()
        os.sched_setaffinity(0, everything)
        report["results"] = results
        report["load_average_after"] = os.getloadavg()
        report["wall_s"] = round(time.perf_counter() - started, 1)
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"servers-{stamp}.json"
        out.write_text(json.dumps(report, indent=2))
    _print_table(results)
    print(f"\nload average after {report['load_average_after']}; wall {report['wall_s']} s")
    print(f"written {out}")


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        name: version(name) for name in ("uvicorn", "granian", "uvloop", "httptools", "litestar")
    }


if __name__ == "__main__":
    uvloop.run(main())
