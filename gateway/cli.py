"""The ``scoregate`` command: serve, relay, migrate, dev, demo."""

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
from typing import Any

import aiohttp
import uvicorn

from gateway.registry import RegistryError, load_registry
from gateway.settings import GatewaySettings


def _serve(args: argparse.Namespace) -> int:
    settings = GatewaySettings.from_env()
    # Check the registry here so a bad file stops start-up with one clear line.
    load_registry(settings.registry_path)
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

    config = GatewaySettings.from_env().writeback
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
    from writeback.migrate import ensure_database, migrate

    config = GatewaySettings.from_env().writeback
    if await ensure_database(config.database_url):
        print(f"created database {config.database_url}")
    applied = await migrate(config.database_url)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


async def _dev(args: argparse.Namespace) -> int:
    from gateway.dev.stack import DevStack

    stack = DevStack(port=args.port)
    try:
        await stack.start()
        seeded = await stack.seed()
        print(f"scoregate dev stack is ready at {stack.url}")
        print(f"  registry:  {stack.env['SCOREGATE_REGISTRY']}")
        print(f"  postgres:  {stack.env['SCOREGATE_DATABASE_URL']}")
        print(f"  kafka:     {stack.env['SCOREGATE_KAFKA_BOOTSTRAP']}")
        print(f"  logs:      {stack.logs}")
        print(f"  seeded {seeded} entities; try:")
        print(
            f"  curl -s {stack.url}/score -H 'content-type: application/json' -d "
            '\'{"model":"fraud","entities":{"customer_id":"c-1","merchant_id":"m-1"},'
            '"context":{"amount":120.5,"card_present":false}}\''
        )
        print("Ctrl-C stops it.", flush=True)
        await _until_signalled()
    finally:
        await stack.stop()
    return 0


def _show(title: str, payload: Any) -> None:
    print(f"\n== {title}")
    print(json.dumps(payload, indent=2, sort_keys=False))


async def _demo(args: argparse.Namespace) -> int:
    from gateway.dev.stack import DevStack

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
                async with http.post("/score", json=body) as response:
                    answer = await response.json()
                    print(
                        f"POST /score {customer}: {response.status}"
                        f" decision={answer.get('decision')} degraded={answer.get('degraded')}"
                    )
                    scored.append(answer)
            async with http.post("/score", json=body) as response:
                again = await response.json()
            print(
                f"POST /score again with request_id {body['request_id']}: decision_id"
                f" {'unchanged' if again['decision_id'] == answer['decision_id'] else 'CHANGED'}"
            )
            _show("POST /score (customer c-10: features fetched from their sources)", scored[1])
            record = await _delivered_record(http, scored[1]["decision_id"])
            _show(f"GET /decisions/{scored[1]['decision_id']} (the audit record)", record)
            async with http.post(
                f"/decisions/{scored[2]['decision_id']}/rollback",
                json={"reason": "demo: customer disputed"},
            ) as response:
                _show("POST /decisions/{id}/rollback", await response.json())
        if args.stay:
            print("\nThe stack stays up; Ctrl-C stops it.", flush=True)
            await _until_signalled()
    finally:
        await stack.stop()
    return 0


async def _delivered_record(http: aiohttp.ClientSession, decision_id: str) -> Any:
    """The record once its event is on Kafka (or after a few seconds, as it stands)."""
    record: Any = None
    for _ in range(50):
        async with http.get(f"/decisions/{decision_id}") as response:
            record = await response.json()
        if record.get("writeback") and record["writeback"][0]["status"] == "delivered":
            break
        await asyncio.sleep(0.1)
    return record


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
    dev = commands.add_parser("dev", help="the whole stack on this machine, until Ctrl-C")
    dev.add_argument("--port", type=int, default=8000)
    demo = commands.add_parser("demo", help="start the dev stack and send requests through it")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--stay", action="store_true", help="keep the stack up afterwards")
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
        elif args.command == "migrate":
            code = asyncio.run(_migrate())
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
