"""The ``scoregate`` command: serve, ingest, relay, migrate, maintain, dlq, audit, dev, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import uvicorn

import writeback
from gateway.auth import ROLES, new_key
from gateway.freshness.reconcile_cli import add_commands as add_reconcile_commands
from gateway.ingest.cli import add_commands as add_ingest_commands
from gateway.registry import RegistryError, load_registry
from gateway.settings import GatewaySettings

SAMPLE_STACK_MISSING = (
    "scoregate: `scoregate {command}` runs the sample stack (package scoregate_dev), which is"
    " not installed here; in a checkout of scoregate, install it with `bash .ci/setup`"
    " (or `uv sync --locked --extra dev`, or `pip install ./sample`)"
)


def _sample_stack_installed() -> bool:
    # The sample stack is a separate distribution (sample/, scoregate-dev) that the
    # deployed gateway does not carry; dev and demo need it, nothing else does.
    try:
        import scoregate_dev  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "scoregate_dev":
            raise
        return False
    return True


def _serve(args: argparse.Namespace) -> int:
    settings = GatewaySettings.from_env()
    # Check here so a bad file or missing keys stop start-up with one clear line.
    load_registry(settings.registry_path)
    if not settings.api_keys:
        print(
            "scoregate: no API keys configured: set SCOREGATE_API_KEYS or"
            " SCOREGATE_API_KEYS_FILE (scoregate keys new --role admin makes one)",
            file=sys.stderr,
        )
        return 2
    uvicorn.run(
        "gateway.asgi:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,
    )
    return 0


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _dev(args: argparse.Namespace) -> int:
    from scoregate_dev.stack import DevStack

    stack = DevStack(port=args.port)
    try:
        await stack.start()
        seeded = await stack.seed()
        print(f"scoregate dev stack is ready at {stack.url}")
        print(f"  registry:  {stack.env['SCOREGATE_REGISTRY']}")
        print(f"  postgres:  {stack.env['SCOREGATE_DATABASE_URL']}")
        print(f"  kafka:     {stack.env['SCOREGATE_KAFKA_BOOTSTRAP']}")
        print(f"  logs:      {stack.logs}")
        print(f"  seeded {seeded} entities")
        for role, secret in stack.keys.items():
            print(f"  {role} key: {secret}")
        print("try:")
        print(
            f"  curl -s {stack.url}/score -H 'authorization: Bearer {stack.keys['scorer']}'"
            " -H 'content-type: application/json' -d "
            '\'{"model":"fraud","entities":{"customer_id":"c-1","merchant_id":"m-1"},'
            '"context":{"amount":120.5,"card_present":false}}\''
        )
        print(f"the auditor's page: {stack.url}/ui (log in with the auditor key)")
        print("Ctrl-C stops it.", flush=True)
        await _until_signalled()
    finally:
        await stack.stop()
    return 0


def _show(title: str, payload: Any) -> None:
    print(f"\n== {title}")
    print(json.dumps(payload, indent=2, sort_keys=False))


async def _demo(args: argparse.Namespace) -> int:
    from scoregate_dev.stack import DevStack

    stack = DevStack(port=args.port)
    try:
        await stack.start()
        await stack.seed()
        print(f"dev stack ready at {stack.url} (logs in {stack.logs})")
        run = uuid.uuid4().hex[:8]
        async with aiohttp.ClientSession(base_url=stack.url) as http:
            scored = []
            for customer, merchant, amount in [
                ("c-1", "m-1", 42.0),
                ("c-10", "m-2", 980.0),  # not in the online store: fetched from sources
                ("c-7", "m-3", 15.5),  # hour-old features: stale, refreshed from source
            ]:
                body = {
                    "model": "fraud",
                    "entities": {"customer_id": customer, "merchant_id": merchant},
                    "request_id": f"demo-{run}-{customer}",
                    "context": {"amount": amount, "card_present": False},
                }
                async with http.post(
                    "/score", json=body, headers=stack.headers("scorer")
                ) as response:
                    answer = await response.json()
                    print(
                        f"POST /score {customer}: {response.status}"
                        f" decision={answer.get('decision')} degraded={answer.get('degraded')}"
                    )
                    scored.append(answer)
            async with http.post("/score", json=body, headers=stack.headers("scorer")) as response:
                again = await response.json()
            print(
                f"POST /score again with request_id {body['request_id']}: decision_id"
                f" {'unchanged' if again['decision_id'] == answer['decision_id'] else 'CHANGED'}"
            )
            auditor = stack.headers("auditor")
            streamed = await _delivered_record(http, scored[0]["decision_id"], auditor)
            print("\n== How c-1's features reached the online store (its audit record's lineage)")
            for line in _channels(streamed):
                print(line)
            _show("POST /score (customer c-10: features fetched from their sources)", scored[1])
            record = await _delivered_record(http, scored[1]["decision_id"], auditor)
            _show(
                f"GET /decisions/{scored[1]['decision_id']} (the audit record, as an auditor"
                " without the pii scope sees it)",
                record,
            )
            async with http.post(
                f"/decisions/{scored[2]['decision_id']}/rollback",
                json={"reason": "demo: customer disputed"},
                headers=stack.headers("operator"),
            ) as response:
                _show("POST /decisions/{id}/rollback", await response.json())
            print("\n== GET /freshness (every gateway's serves, from the audit store's rollup)")
            for line in _freshness_lines(await _rolled_up_report(http, auditor)):
                print(line)
        if args.stay:
            print("\nThe stack stays up; Ctrl-C stops it.", flush=True)
            await _until_signalled()
    finally:
        await stack.stop()
    return 0


async def _rolled_up_report(http: aiohttp.ClientSession, headers: dict[str, str]) -> Any:
    """``GET /freshness`` once the decisions made so far are rolled up (10 s at most)."""
    report: Any = {}
    for _ in range(40):
        async with http.get("/freshness", headers=headers) as response:
            report = await response.json()
        if response.status == 200 and report.get("backlog") == 0:
            break
        await asyncio.sleep(0.25)
    return report


def _freshness_lines(report: Any) -> list[str]:
    """One line per feature of a freshness report: the last 5 minutes and ingest lag."""
    lines = []
    for feature in report.get("features", []):
        window = feature["windows"]["5m"]
        share = window["within_sla_share"]
        within = "-" if share is None else f"{share:.0%}"
        p99 = window["staleness_p99_ms"]
        lag = feature["ingest"]["lag"].get("5m", {}).get("p99_ms")
        lines.append(
            f"{feature['name']:<22} SLA {feature['sla_ms'] / 1000:>6.0f} s"
            f"  served {window['served']:>3}  within SLA {within:>4}"
            f"  staleness p99 {'-' if p99 is None else f'{p99 / 1000:.1f} s':>8}"
            f"  ingest lag p99 {'-' if lag is None else f'{lag:.0f} ms'}"
        )
    return lines


def _channels(record: Any) -> list[str]:
    """One line per feature of a decision record: status, channel and where it came from."""
    lines = []
    served = record.get("features", {})
    for name, lineage in sorted(record.get("lineage", {}).items()):
        status = served.get(name, {}).get("status", "?")
        channel = lineage.get("channel") or lineage.get("kind", "?")
        where = lineage.get("source_ref", "")
        if stream := lineage.get("stream"):
            where = f"{stream['topic']}[{stream['partition']}]@{stream['offset']}"
        if change := lineage.get("change"):
            table = ".".join(p for p in (change.get("schema"), change.get("table")) if p)
            where += f" ({change.get('connector')} {table}, lsn {change.get('lsn')})"
        lines.append(f"  {name:<22} {status:<9} {channel:<8} {where}")
    return lines


async def _delivered_record(
    http: aiohttp.ClientSession, decision_id: str, headers: dict[str, str]
) -> Any:
    """The record once its event is on Kafka (or after a few seconds, as it stands)."""
    record: Any = None
    for _ in range(50):
        async with http.get(f"/decisions/{decision_id}", headers=headers) as response:
            record = await response.json()
        if record.get("writeback") and record["writeback"][0]["status"] == "delivered":
            break
        await asyncio.sleep(0.1)
    return record


def _keys(args: argparse.Namespace) -> int:
    secret, key = new_key(args.role, ["pii"] if args.pii else [])
    print(f"key:    {secret}")
    print(f"config: {key.line()}")
    print("Add the config line to SCOREGATE_API_KEYS (comma-separated) or to the keys file;")
    print("the key itself is shown only now and is not stored anywhere.")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoregate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="warning")
    # ingest, reconcile, relay, migrate, maintain, dlq, audit: each parser's `run` carries it out.
    add_ingest_commands(commands)
    add_reconcile_commands(commands)
    writeback.add_commands(commands)
    dev = commands.add_parser(
        "dev", help="the sample stack on this machine, until Ctrl-C (needs scoregate-dev)"
    )
    dev.add_argument("--port", type=int, default=8000)
    demo = commands.add_parser(
        "demo", help="start the sample stack and send requests through it (needs scoregate-dev)"
    )
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--stay", action="store_true", help="keep the stack up afterwards")
    keys = commands.add_parser("keys", help="API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_commands.add_parser("new", help="make a key and print its config line")
    new.add_argument("--role", choices=ROLES, required=True)
    new.add_argument("--pii", action="store_true", help="add the pii scope")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``scoregate`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    code = 0
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    try:
        if run is not None:
            code = run(args)
        elif args.command == "serve":
            code = _serve(args)
        elif args.command == "keys":
            code = _keys(args)
        elif args.command in ("dev", "demo") and not _sample_stack_installed():
            print(SAMPLE_STACK_MISSING.format(command=args.command), file=sys.stderr)
            code = 2
        elif args.command == "dev":
            with contextlib.suppress(KeyboardInterrupt):
                code = asyncio.run(_dev(args))
        else:
            code = asyncio.run(_demo(args))
    except RegistryError as exc:
        print(f"scoregate: bad registry: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
