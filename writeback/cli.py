"""The write-back commands of ``scoregate``: relay, migrate, maintain, dlq, audit verify.

:func:`add_commands` adds them to the ``scoregate`` parser. Each reads its settings
from ``SCOREGATE_*`` variables (:meth:`WritebackConfig.from_env`) and needs nothing of
the gateway: no registry, no keys.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import msgspec

from writeback.config import WritebackConfig
from writeback.dead_letters import DeadLetterQueue
from writeback.errors import NotDeadLettered
from writeback.kafka import KafkaPublisher
from writeback.pool import create_pool
from writeback.relay import OutboxRelay
from writeback.retention import Retention
from writeback.schema import ensure_database, migrate
from writeback.seals import verify

Command = Callable[[argparse.Namespace], int]
"""A command: given the parsed arguments, it runs and returns the exit code."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add relay, migrate, maintain, dlq and audit to a parser's subcommands.

    Each parser added gets the default ``run``, a :data:`Command` that carries it out.

    Args:
        commands: The subcommands of the ``scoregate`` parser.
    """
    relay = commands.add_parser("relay", help="run the outbox relay on its own")
    relay.set_defaults(run=_in_loop(_relay))
    migration = commands.add_parser("migrate", help="create the database if missing and migrate it")
    migration.set_defaults(run=_in_loop(_migrate))
    maintain = commands.add_parser(
        "maintain", help="create partitions ahead, drop and purge what is past retention"
    )
    maintain.set_defaults(run=_in_loop(_maintain))
    dlq = commands.add_parser("dlq", help="the dead-letter queue")
    dlq.set_defaults(run=_in_loop(_dlq))
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_commands.add_parser("list", help="dead letters, oldest first (JSON)")
    dlq_list.add_argument("--limit", type=int, default=50)
    dlq_list.add_argument("--cursor", default=None, help="next_cursor of the previous page")
    dlq_redrive = dlq_commands.add_parser("redrive", help="publish a dead letter again")
    dlq_redrive.add_argument("event_id", help="the event's id (its ce_id)")
    dlq_redrive.add_argument("--actor", default="cli", help="who redrives it (kept in history)")
    audit = commands.add_parser("audit", help="audit tools")
    audit.set_defaults(run=_in_loop(_verify))
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    check = audit_commands.add_parser(
        "verify", help="walk the decision records' hash chain; exit 1 at the first mismatch"
    )
    check.add_argument(
        "--since", type=datetime.fromisoformat, help="start at records committed from then"
    )


def _in_loop(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Command:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(command(args))

    return run


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _relay(args: argparse.Namespace) -> int:
    config = WritebackConfig.from_env()
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


async def _migrate(args: argparse.Namespace) -> int:
    config = WritebackConfig.from_env()
    if await ensure_database(config.database_url):
        print(f"created database {config.database_url}")
    applied = await migrate(config.database_url)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


async def _dlq(args: argparse.Namespace) -> int:
    config = WritebackConfig.from_env()
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


async def _maintain(args: argparse.Namespace) -> int:
    config = WritebackConfig.from_env()
    pool = await create_pool(msgspec.structs.replace(config, pool_min_size=0))
    try:
        report = await Retention(pool, config).run_once()
    finally:
        await pool.close()
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 0


async def _verify(args: argparse.Namespace) -> int:
    config = WritebackConfig.from_env()
    pool = await create_pool(config)
    try:
        report = await verify(pool, args.since)
    finally:
        await pool.close()
    print(json.dumps(msgspec.to_builtins(report), indent=2))
    return 0 if report.ok else 1
