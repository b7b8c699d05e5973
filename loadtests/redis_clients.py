"""The online store's read with other Redis clients: redis-py, the gateway's own, coredis, GLIDE.

One ``/score`` reads two entity hashes in one round trip: ``HMGET`` of a customer's 5
fields and of a merchant's 2, each field a msgpack ``StoredValue`` (as the gateway keeps
them). This script makes that read, closed loop, with ``concurrency`` tasks in one
process on uvloop, through each of:

- ``redis-py``: a pipeline per read (``transaction=False``, two ``HMGET``), a blocking
  pool of 16 connections (redis-py asyncio with hiredis, what the gateway uses);
- ``gateway``: the gateway's ``OnlineStore.read`` (the one imported: the script says
  where from and whether it is HEAD's), 16 connections, a fresh ``Deadline`` per read;
  ``gateway@COMMIT`` runs that commit's store beside it (its module alone, on today's
  deadline and breaker);
- ``coredis-pipe``: a coredis pipeline per read (``transaction=False``), 16 connections;
- ``coredis-mux``: two plain ``hmget`` commands at once (``asyncio.gather``): coredis
  hands a connection back to its pool as soon as a command is queued on it, so
  concurrent commands share one connection and its writer sends them together;
- ``coredis-conn``: the same multiplexing one level down, as the gateway's store would
  use it: both ``HMGET`` requests queued on one pooled connection, then awaited;
- ``glide``: a valkey-glide non-atomic ``Batch`` per read, on its one multiplexed
  connection (its Rust core runs in threads of this process).

Every variant decodes the values as the gateway does and checks each read got its own
entities' values. This process (all its threads) is pinned to one core
(``--cpu``, default 1). Each round runs every variant at each concurrency, the
variants' order rotated from round to round; the figures are medians of the rounds:
reads per second, this process's CPU per read (``time.process_time``: every thread,
GLIDE's included), Redis's CPU per read (``/proc/<pid>/task/*/schedstat`` of the Redis
server), Redis's socket reads per read (``total_reads_processed``: fewer when reads of
many requests arrive together), p50 and p99 latency per read. Commands that other
clients sent Redis meanwhile are counted, so a busy Redis shows.

``--check-cancel`` instead cancels reads at different points of their flight and checks
that the next read on the same client gets its own entities' values.

Keys live under a prefix of this run's own and are deleted at the end. The extra clients
are not project dependencies: run it from a scratch environment that has them::

    uv venv /tmp/rcenv --python 3.11
    uv pip install --python /tmp/rcenv/bin/python -r <(uv export --frozen --no-hashes \\
        --no-emit-project) -e . coredis valkey-glide
    /tmp/rcenv/bin/python loadtests/redis_clients.py
    /tmp/rcenv/bin/python loadtests/redis_clients.py --rounds 5 --variants redis-py gateway
    /tmp/rcenv/bin/python loadtests/redis_clients.py --variants gateway gateway@HEAD~3
    /tmp/rcenv/bin/python loadtests/redis_clients.py --check-cancel

An editable install imports ``gateway`` from the work tree, edits and all. To measure a
commit as it is, put an export of it first: ``git archive HEAD | tar -x -C /tmp/head``,
then ``cd /tmp && PYTHONPATH=/tmp/head /tmp/rcenv/bin/python <checkout>/loadtests/...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, cast

import coredis
import msgspec
import redis.asyncio as aioredis
import uvloop
from coredis.retry import NoRetryPolicy
from glide import Batch, GlideClient, GlideClientConfiguration, NodeAddress
from redis.utils import HIREDIS_AVAILABLE

from contracts.registry import BreakerPolicy, OnlineStoreSpec
from gateway.deadline import Deadline
from gateway.features import online_store
from gateway.features.online_store import StoredValue

CUSTOMER_FIELDS = (
    "txn_count_30m",
    "txn_amount_24h",
    "avg_amount_90d",
    "account_age_days",
    "chargebacks_365d",
)
MERCHANT_FIELDS = ("merchant_risk", "merchant_category")
CUSTOMERS = 2000
MERCHANTS = 500
CONNECTIONS = 16
CONCURRENCIES = (1, 16, 64)
TIMEOUT_S = 1.0
VARIANTS = ("redis-py", "gateway", "coredis-pipe", "coredis-mux", "coredis-conn", "glide")
RESULTS = Path(__file__).parent / "results"
CHECKOUT = Path(__file__).resolve().parent.parent
STORE_PATH = "gateway/features/online_store.py"

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(StoredValue).decode

Row = dict[str, StoredValue]


def stored(number: int) -> StoredValue:
    """A value as a push leaves it, its number telling which entity and field it is."""
    return StoredValue(
        value=number,
        event_time_ms=1_796_000_000_000,
        ingested_at_ms=1_796_000_000_123,
        lineage_id="lin_1f2e3d",
        kind="push",
        source_system="core",
        source_ref="t1",
        schema_version=1,
        transform=None,
    )


def customer_value(customer: int, field: int) -> int:
    return customer * 10 + field


def merchant_value(merchant: int, field: int) -> int:
    return 1_000_000 + merchant * 10 + field


def entities(i: int) -> tuple[int, int]:
    """The customer and merchant that read ``i`` scores."""
    return i % CUSTOMERS, (i * 7) % MERCHANTS


def present(names: Sequence[str], row: Sequence[bytes | None]) -> Row:
    """The values of one entity's ``HMGET``, decoded as the gateway decodes them."""
    found = {}
    for name, raw in zip(names, row, strict=True):
        if raw is not None:
            value = _decode(raw)
            if not value.deleted:
                found[name] = value
    return found


def is_own(rows: Sequence[Row], i: int) -> bool:
    """Whether a read got its own customer's and merchant's values, all of them."""
    customer, merchant = entities(i)
    first, second = rows
    return (
        len(first) == len(CUSTOMER_FIELDS)
        and len(second) == len(MERCHANT_FIELDS)
        and first[CUSTOMER_FIELDS[-1]].value == customer_value(customer, len(CUSTOMER_FIELDS) - 1)
        and second[MERCHANT_FIELDS[-1]].value == merchant_value(merchant, len(MERCHANT_FIELDS) - 1)
    )


class Reader(Protocol):
    """One way to make the read: both entities' values of read ``i``, in one round trip."""

    name: str

    async def read(self, i: int) -> list[Row]: ...


class RedisPyPipeline:
    name = "redis-py"

    def __init__(self, url: str, prefix: str) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=CONNECTIONS, timeout=None, socket_timeout=TIMEOUT_S
        )
        self.client = aioredis.Redis.from_pool(pool)
        self.prefix = prefix

    async def open(self) -> None:
        pool = self.client.connection_pool
        held = [await pool.get_connection() for _ in range(CONNECTIONS)]  # type: ignore[no-untyped-call]
        for connection in held:
            await connection.connect()
            await pool.release(connection)

    async def read(self, i: int) -> list[Row]:
        customer, merchant = entities(i)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(f"{self.prefix}:customer:{customer}", CUSTOMER_FIELDS)
            pipe.hmget(f"{self.prefix}:merchant:{merchant}", MERCHANT_FIELDS)
            first, second = await pipe.execute()
        return [present(CUSTOMER_FIELDS, first), present(MERCHANT_FIELDS, second)]

    async def close(self) -> None:
        await self.client.aclose()


class GatewayStore:
    """The gateway's store: the one imported, or ``module`` (an older commit's)."""

    def __init__(self, url: str, prefix: str, module: ModuleType = online_store) -> None:
        self.name = "gateway" if module is online_store else f"gateway@{module.COMMIT}"
        # A generous timeout and breaker: a slow turn of a shared machine must not send
        # the rest of the run to the breaker. Failures are counted and reported.
        spec = OnlineStoreSpec(
            timeout_ms=int(TIMEOUT_S * 1000),
            breaker=BreakerPolicy(fail_max=1000, reset_timeout_ms=100),
        )
        self.store = module.OnlineStore.from_url(url, prefix, spec, max_connections=CONNECTIONS)

    async def open(self) -> None:
        await self.store.open()

    async def read(self, i: int) -> list[Row]:
        customer, merchant = entities(i)
        reads = [
            ("customer", str(customer), CUSTOMER_FIELDS),
            ("merchant", str(merchant), MERCHANT_FIELDS),
        ]
        rows: list[Row] = await self.store.read(reads, Deadline(TIMEOUT_S))
        return rows

    async def close(self) -> None:
        await self.store.close()


class Coredis:
    """coredis's client; ``how`` says which way the read uses it."""

    def __init__(self, host: str, port: int, prefix: str, how: str) -> None:
        self.name = f"coredis-{how}"
        self.client: coredis.Redis[bytes] = coredis.Redis(
            host,
            port,
            max_connections=CONNECTIONS,
            stream_timeout=TIMEOUT_S,
            connect_timeout=TIMEOUT_S,
            retry_policy=NoRetryPolicy(),
        )
        self.prefix = prefix
        self.read: Callable[[int], Any] = {
            "pipe": self._pipeline,
            "mux": self._gathered,
            "conn": self._on_one_connection,
        }[how]

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        # coredis's pool runs its connections in a task group of the task that enters it.
        await stack.enter_async_context(self.client)
        await self.client.ping()

    def _keys(self, i: int) -> tuple[str, str]:
        customer, merchant = entities(i)
        return f"{self.prefix}:customer:{customer}", f"{self.prefix}:merchant:{merchant}"

    async def _pipeline(self, i: int) -> list[Row]:
        first_key, second_key = self._keys(i)
        async with self.client.pipeline(transaction=False) as pipe:
            first = pipe.hmget(first_key, CUSTOMER_FIELDS)
            second = pipe.hmget(second_key, MERCHANT_FIELDS)
        return [present(CUSTOMER_FIELDS, await first), present(MERCHANT_FIELDS, await second)]

    async def _gathered(self, i: int) -> list[Row]:
        first_key, second_key = self._keys(i)
        first, second = await asyncio.gather(
            self.client.hmget(first_key, CUSTOMER_FIELDS),
            self.client.hmget(second_key, MERCHANT_FIELDS),
        )
        return [present(CUSTOMER_FIELDS, first), present(MERCHANT_FIELDS, second)]

    async def _on_one_connection(self, i: int) -> list[Row]:
        first_key, second_key = self._keys(i)
        # Queued requests stay on the connection once it is back in the pool: their
        # replies are matched to them in order by the connection's reader task.
        async with self.client.connection_pool.acquire() as connection:
            first = connection.create_request(b"HMGET", first_key, *CUSTOMER_FIELDS, decode=False)
            second = connection.create_request(b"HMGET", second_key, *MERCHANT_FIELDS, decode=False)
        return [present(CUSTOMER_FIELDS, await first), present(MERCHANT_FIELDS, await second)]

    async def close(self) -> None:
        pass  # the exit stack closes the client


class GlideBatch:
    name = "glide"

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.config = GlideClientConfiguration(
            [NodeAddress(host, port)], request_timeout=int(TIMEOUT_S * 1000)
        )
        self.prefix = prefix
        self.client: GlideClient | None = None

    async def open(self) -> None:
        self.client = await GlideClient.create(self.config)

    async def read(self, i: int) -> list[Row]:
        assert self.client is not None
        customer, merchant = entities(i)
        batch = Batch(is_atomic=False)
        batch.hmget(f"{self.prefix}:customer:{customer}", list(CUSTOMER_FIELDS))
        batch.hmget(f"{self.prefix}:merchant:{merchant}", list(MERCHANT_FIELDS))
        replies = await self.client.exec(batch, raise_on_error=True)
        assert replies is not None
        first, second = (cast(list[bytes | None], reply) for reply in replies)
        return [present(CUSTOMER_FIELDS, first), present(MERCHANT_FIELDS, second)]

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


def pin_process(cpu: int) -> int:
    """Pin every thread of this process to ``cpu`` (threads started later inherit it)."""
    threads = 0
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), {cpu})
            threads += 1
    return threads


def redis_cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread of the Redis server."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total


async def redis_counters(client: aioredis.Redis) -> tuple[int, int]:
    """Commands processed and socket reads processed by Redis so far."""
    info = await client.info("stats")
    return int(info["total_commands_processed"]), int(info["total_reads_processed"])


async def drive(reader: Reader, concurrency: int, first: int, reads: int) -> tuple[list[int], int]:
    """Make ``reads`` reads with ``concurrency`` tasks; latencies (ns) and failed reads."""
    latencies = [0] * reads
    failures = 0
    taken = 0

    async def requester() -> None:
        nonlocal taken, failures
        while taken < reads:
            n = taken
            taken += 1
            started = time.perf_counter_ns()
            try:
                rows = await reader.read(first + n)
            except Exception:  # each client's own errors, and the gateway's StoreUnavailable
                failures += 1
                continue
            latencies[n] = time.perf_counter_ns() - started
            if not is_own(rows, first + n):
                failures += 1

    await asyncio.gather(*(requester() for _ in range(concurrency)))
    return [latency for latency in latencies if latency], failures


async def cell(
    reader: Reader, concurrency: int, reads: int, admin: aioredis.Redis, redis_pid: int
) -> dict[str, Any]:
    """One measured run of one variant at one concurrency, after a short warm-up."""
    await drive(reader, concurrency, 0, max(200, reads // 10))
    commands_before, socket_reads_before = await redis_counters(admin)
    redis_before = redis_cpu_ns(redis_pid)
    cpu_before = time.process_time()
    started = time.perf_counter()
    latencies, failures = await drive(reader, concurrency, 0, reads)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    redis_cpu = (redis_cpu_ns(redis_pid) - redis_before) / 1e9
    commands_after, socket_reads_after = await redis_counters(admin)
    latencies.sort()
    foreign = commands_after - commands_before - 2 * reads - 1  # the INFO itself is one
    return {
        "reads_per_s": reads / wall,
        "client_cpu_us_per_read": cpu / reads * 1e6,
        "redis_cpu_us_per_read": redis_cpu / reads * 1e6,
        "redis_socket_reads_per_read": (socket_reads_after - socket_reads_before) / reads,
        "p50_ms": latencies[len(latencies) // 2] / 1e6 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] / 1e6 if latencies else None,
        "failures": failures,
        "foreign_commands": max(foreign, 0),
        "wall_s": wall,
    }


async def seed(admin: aioredis.Redis, prefix: str) -> int:
    """Write every entity's values; returns the size of one encoded value."""
    async with admin.pipeline(transaction=False) as pipe:
        for customer in range(CUSTOMERS):
            pipe.hset(
                f"{prefix}:customer:{customer}",
                mapping={
                    name: _encode(stored(customer_value(customer, field)))
                    for field, name in enumerate(CUSTOMER_FIELDS)
                },
            )
        for merchant in range(MERCHANTS):
            pipe.hset(
                f"{prefix}:merchant:{merchant}",
                mapping={
                    name: _encode(stored(merchant_value(merchant, field)))
                    for field, name in enumerate(MERCHANT_FIELDS)
                },
            )
        await pipe.execute()
    return len(_encode(stored(customer_value(CUSTOMERS - 1, 4))))


async def unseed(admin: aioredis.Redis, prefix: str) -> int:
    keys = [key async for key in admin.scan_iter(match=f"{prefix}:*", count=1000)]
    for first in range(0, len(keys), 500):
        await admin.delete(*keys[first : first + 500])
    return len(keys)


async def check_cancel(reader: Reader, tries: int) -> dict[str, int | None]:
    """Cancel reads after 0 to 5 loop turns; the next read must get its own values in time.

    A cancel can land before the read is sent, while its reply is on the way, or after
    it arrived (``finished_first``). ``hung``: the next read had no answer within 2 s;
    after three of those the client is given up on (``first_hung`` is the try).
    """
    outcome = dict.fromkeys(("cancelled", "finished_first", "wrong", "failed", "hung"), 0)
    first_hung: int | None = None
    made = 0
    for n in range(tries):
        if outcome["hung"] == 3:
            break
        made += 1
        task = asyncio.ensure_future(reader.read(2 * n))
        for _ in range(n % 6):
            await asyncio.sleep(0)
        outcome["finished_first"] += task.done()
        task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
        outcome["cancelled"] += task.cancelled()
        try:
            async with asyncio.timeout(2):
                rows = await reader.read(2 * n + 1)
        except TimeoutError:
            outcome["hung"] += 1
            first_hung = n if first_hung is None else first_hung
            continue
        except Exception:
            outcome["failed"] += 1
            continue
        outcome["wrong"] += not is_own(rows, 2 * n + 1)
    return {"tries": made, **outcome, "first_hung": first_hung}


def store_at(commit: str) -> ModuleType:
    """The online store module of an earlier commit of this checkout, imported on its own."""
    source = subprocess.run(
        ["git", "-C", str(CHECKOUT), "show", f"{commit}:{STORE_PATH}"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    short = subprocess.run(
        ["git", "-C", str(CHECKOUT), "rev-parse", "--short", commit],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"online_store_{short}.py"
        path.write_text(source)
        spec = spec_from_file_location(f"online_store_{short}", path)
        assert spec is not None and spec.loader is not None
        module = module_from_spec(spec)
        sys.modules[spec.name] = module  # msgspec resolves the Structs' annotations through it
        spec.loader.exec_module(module)
    module.__dict__["COMMIT"] = short
    return module


def measured_store() -> str:
    """Where the gateway's store was imported from, and whether it is this checkout's HEAD."""
    imported = Path(online_store.__file__ or "").read_text()
    head = subprocess.run(
        ["git", "-C", str(CHECKOUT), "show", f"HEAD:{STORE_PATH}"],
        capture_output=True,
        text=True,
    ).stdout
    commit = subprocess.run(
        ["git", "-C", str(CHECKOUT), "log", "-1", "--format=%h %s", "--", STORE_PATH],
        capture_output=True,
        text=True,
    ).stdout.strip()
    same = "the same as" if imported == head else "DIFFERENT from"
    return f"{online_store.__file__}, {same} HEAD's (last changed by {commit[:90]})"


def build(name: str, url: str, host: str, port: int, prefix: str) -> Any:
    if name.startswith("gateway@"):
        return GatewayStore(url, prefix, store_at(name.removeprefix("gateway@")))
    if name == "redis-py":
        return RedisPyPipeline(url, prefix)
    if name == "gateway":
        return GatewayStore(url, prefix)
    if name.startswith("coredis-"):
        return Coredis(host, port, prefix, name.removeprefix("coredis-"))
    return GlideBatch(host, port, prefix)


def median(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if r[key] is not None]
    return statistics.median(values) if values else None


def print_table(results: dict[str, dict[int, list[dict[str, Any]]]]) -> None:
    header = (
        f"{'variant':<16} {'conc':>4} {'reads/s':>8} {'client µs':>10} {'redis µs':>9} "
        f"{'rd/read':>8} {'p50 ms':>7} {'p99 ms':>7} {'fail':>5} {'foreign':>8}"
    )
    print(header)
    for concurrency in CONCURRENCIES:
        for name, by_concurrency in results.items():
            rounds = by_concurrency.get(concurrency)
            if not rounds:
                continue
            values = {key: median(rounds, key) for key in rounds[0]}
            print(
                f"{name:<16} {concurrency:>4} {values['reads_per_s']:>8.0f} "
                f"{values['client_cpu_us_per_read']:>10.1f} "
                f"{values['redis_cpu_us_per_read']:>9.1f} "
                f"{values['redis_socket_reads_per_read']:>8.2f} "
                f"{values['p50_ms']:>7.3f} {values['p99_ms']:>7.3f} "
                f"{sum(r['failures'] for r in rounds):>5} "
                f"{sum(r['foreign_commands'] for r in rounds):>8}"
            )


async def run(args: argparse.Namespace) -> None:
    # A stop (SIGTERM, ^C) cancels the run, so the keys are still deleted.
    main_task = asyncio.current_task()
    assert main_task is not None
    for stop in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(stop, main_task.cancel)
    url = f"redis://{args.host}:{args.port}/0"
    prefix = f"rcbench{os.getpid()}"
    admin = aioredis.Redis.from_url(url)
    redis_pid = int((await admin.info("server"))["process_id"])
    try:
        value_size = await seed(admin, prefix)
        readers = [build(name, url, args.host, args.port, prefix) for name in args.variants]
        async with contextlib.AsyncExitStack() as stack:
            for reader in readers:
                await (reader.open(stack) if isinstance(reader, Coredis) else reader.open())
            # GLIDE's core starts threads of its own: pin them too.
            threads = pin_process(args.cpu)
            print(
                f"redis pid {redis_pid} (cpus {os.sched_getaffinity(redis_pid)}), "
                f"client pinned to cpu {args.cpu} ({threads} threads), hiredis "
                f"{HIREDIS_AVAILABLE}, value {value_size} bytes, load {os.getloadavg()}\n"
                f"gateway's store: {measured_store()}",
                flush=True,
            )
            if args.check_cancel:
                for reader in readers:
                    print(reader.name, await check_cancel(reader, args.cancel_tries), flush=True)
                return
            await measure(args, readers, admin, redis_pid, value_size)
            for reader in readers:
                await reader.close()
    finally:
        print(f"deleted {await unseed(admin, prefix)} keys", flush=True)
        await admin.aclose()


async def measure(
    args: argparse.Namespace,
    readers: list[Any],
    admin: aioredis.Redis,
    redis_pid: int,
    value_size: int,
) -> None:
    results: dict[str, dict[int, list[dict[str, Any]]]] = {r.name: {} for r in readers}
    loads = [os.getloadavg()]
    started = time.perf_counter()
    for round_number in range(args.rounds):
        order = readers[round_number % len(readers) :] + readers[: round_number % len(readers)]
        for concurrency in CONCURRENCIES:
            reads = args.reads_single if concurrency == 1 else args.reads
            for reader in order:
                figures = await cell(reader, concurrency, reads, admin, redis_pid)
                results[reader.name].setdefault(concurrency, []).append(figures)
        loads.append(os.getloadavg())
        print(
            f"round {round_number + 1}/{args.rounds} done at "
            f"{time.perf_counter() - started:.0f} s, load {loads[-1]}",
            flush=True,
        )
    print_table(results)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"redis-clients-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "value_bytes": value_size,
                "load_averages": loads,
                "python": sys.version,
                "results": results,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--cpu", type=int, default=1, help="core this process is pinned to")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reads", type=int, default=10_000, help="reads per run, concurrent")
    parser.add_argument("--reads-single", type=int, default=3000, help="reads at concurrency 1")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        help=f"of {', '.join(VARIANTS)}; gateway@COMMIT: that commit's store beside",
    )
    parser.add_argument("--check-cancel", action="store_true")
    parser.add_argument("--cancel-tries", type=int, default=600)
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS and not v.startswith("gateway@")]
    if unknown:
        parser.error(f"unknown variants: {unknown}")
    pin_process(args.cpu)
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
