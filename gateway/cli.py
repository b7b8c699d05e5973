"""The ``scoregate`` command: serve, relay, migrate, maintain, dlq, dev, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiohttp
import msgspec
import uvicorn

from gateway.auth import ROLES, new_key
from gateway.registry import RegistryError, load_registry
from gateway.settings import GatewaySettings, writeback_from_env

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


async def _relay() -> int:
    from writeback.kafka import KafkaPublisher
    from writeback.pool import create_pool
    from writeback.relay import OutboxRelay

    config = writeback_from_env()
    pool = await create_pool(config)
    publisher = KafkaPublisher(config)
    relay = OutboxRelay(pool, publisher, config)
    await relay.start()
    try:
        await _until_signalled()
    finally:
        await relay.stop()
        await publisher.stop()
        await pool.close()
    return 0


async def _migrate() -> int:
    from writeback import ensure_database, migrate

    config = writeback_from_env()
    if await ensure_database(config.database_url):
        print(f"created database {config.database_url}")
    applied = await migrate(config.database_url)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


async def _dlq(args: argparse.Namespace) -> int:
    import msgspec

    from writeback.dead_letters import DeadLetterQueue, NotDeadLettered
    from writeback.pool import create_pool

    config = writeback_from_env()
    pool = await create_pool(msgspec.structs.replace(config, pool_min_size=0))
    try:
        queue = DeadLetterQueue(pool, config)
        if args.dlq_command == "list":
            page = await queue.list(args.limit, args.cursor)
            print(msgspec.json.format(msgspec.json.encode(page), indent=2).decode())
            return 0
        try:
            letter = await queue.redrive(args.event_id, args.actor)
        except NotDeadLettered as exc:
            print(f"scoregate: {exc}", file=sys.stderr)
            return 1
        if letter is None:
            print(f"scoregate: no event {args.event_id}", file=sys.stderr)
            return 1
        print(msgspec.json.format(msgspec.json.encode(letter), indent=2).decode())
        return 0
    finally:
        await pool.close()


async def _maintain() -> int:
    import dataclasses

    import msgspec

    from writeback.pool import create_pool
    from writeback.retention import Retention

    config = writeback_from_env()
    pool = await create_pool(msgspec.structs.replace(config, pool_min_size=0))
    try:
        report = await Retention(pool, config).run_once()
    finally:
        await pool.close()
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 0


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
            _show("POST /score (customer c-10: features fetched from their sources)", scored[1])
            auditor = stack.headers("auditor")
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
        if args.stay:
            print("\nThe stack stays up; Ctrl-C stops it.", flush=True)
            await _until_signalled()
    finally:
        await stack.stop()
    return 0


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


async def _verify(args: argparse.Namespace) -> int:
    from writeback.pool import create_pool
    from writeback.seals import verify

    config = writeback_from_env()
    pool = await create_pool(config)
    try:
        report = await verify(pool, args.since)
    finally:
        await pool.close()
    print(json.dumps(msgspec.to_builtins(report), indent=2))
    return 0 if report.ok else 1


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
    commands.add_parser("relay", help="run the outbox relay on its own")
    commands.add_parser("migrate", help="create the database if missing and migrate it")
    commands.add_parser(
        "maintain", help="create partitions ahead, drop and purge what is past retention"
    )
    dlq = commands.add_parser("dlq", help="the dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_commands.add_parser("list", help="dead letters, oldest first (JSON)")
    dlq_list.add_argument("--limit", type=int, default=50)
    dlq_list.add_argument("--cursor", default=None, help="next_cursor of the previous page")
    dlq_redrive = dlq_commands.add_parser("redrive", help="publish a dead letter again")
    dlq_redrive.add_argument("event_id", help="the event's id (its ce_id)")
    dlq_redrive.add_argument("--actor", default="cli", help="who redrives it (kept in history)")
    dev = commands.add_parser(
        "dev", help="the sample stack on this machine, until Ctrl-C (needs scoregate-dev)"
    )
    dev.add_argument("--port", type=int, default=8000)
    demo = commands.add_parser(
        "demo", help="start the sample stack and send requests through it (needs scoregate-dev)"
    )
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--stay", action="store_true", help="keep the stack up afterwards")
    audit = commands.add_parser("audit", help="audit tools")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    check = audit_commands.add_parser(
        "verify", help="walk the decision records' hash chain; exit 1 at the first mismatch"
    )
    check.add_argument(
        "--since", type=datetime.fromisoformat, help="start at records committed from then"
    )
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
    try:
        if args.command == "serve":
            code = _serve(args)
        elif args.command == "relay":
            code = asyncio.run(_relay())
        elif args.command == "audit":
            code = asyncio.run(_verify(args))
        elif args.command == "keys":
            code = _keys(args)
        elif args.command == "migrate":
            code = asyncio.run(_migrate())
        elif args.command == "maintain":
            code = asyncio.run(_maintain())
        elif args.command == "dlq":
            code = asyncio.run(_dlq(args))
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
