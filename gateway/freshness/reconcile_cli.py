"""``scoregate reconcile``: reconcile features against their sources now, from the shell.

It runs as the gateway's background job does (the same sampling, call budget, breaker
and compare-and-set), stores the run for ``GET /reconciliation`` and the auditor's
pages, and prints what it found. A run against a source another process is
reconciling waits for that run to end, so the source's budget holds across both.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import msgspec
import redis.asyncio as aioredis
import uvloop

from contracts.reconciliation import ReconciliationRun
from gateway.features.online_store import OnlineStore
from gateway.features.sources import SourceClient
from gateway.freshness.reconciliation import (
    EntitySampler,
    Reconciler,
    ReconciliationError,
    summary,
)
from gateway.registry import load_registry
from gateway.settings import GatewaySettings
from writeback import AuditUnavailable, ReconciliationStore, create_pool

_COLUMNS = (
    "feature",
    "sampled",
    "checked",
    "matched",
    "mismatched",
    "newer_at_source",
    "missing_in_store",
    "missing_at_source",
    "repaired",
    "errors",
    "source_calls",
    "stopped_reason",
    "seconds",
)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``reconcile`` to the ``scoregate`` parser.

    Args:
        commands: The subcommands of the ``scoregate`` parser.
    """
    reconcile = commands.add_parser(
        "reconcile",
        help="compare the online store with the sources (and repair it)",
        description=__doc__,
    )
    which = reconcile.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--feature", action="append", help="a feature to reconcile (repeat for more)"
    )
    which.add_argument(
        "--all", action="store_true", help="every feature with a source and reconcile = true"
    )
    reconcile.add_argument(
        "--sample", type=_count, default=100, help="entities sampled from the store per feature"
    )
    reconcile.add_argument(
        "--entity",
        action="append",
        default=[],
        help="an entity id to check besides the sample (repeat for more); an id the store"
        " holds no value of the feature for is checked too (missing in store)",
    )
    reconcile.add_argument(
        "--repair",
        action="store_true",
        help="write the source's value where the store disagrees or has none (an older"
        " source value never overwrites a newer stored one)",
    )
    reconcile.add_argument(
        "--format", choices=("json", "table"), default="json", help="how to print the runs"
    )
    reconcile.set_defaults(run=_in_loop(_reconcile))


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _in_loop(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(command(args))

    return run


async def _reconcile(args: argparse.Namespace) -> int:
    settings = GatewaySettings.from_env()
    registry = load_registry(settings.registry_path)
    store = OnlineStore.from_url(
        settings.redis_url,
        settings.redis_prefix,
        registry.file.online_store,
        max_connections=4,
    )
    sampler = EntitySampler(aioredis.Redis.from_url(settings.redis_url), store)
    pool = await create_pool(settings.writeback)
    runs: list[ReconciliationRun] = []
    try:
        async with aiohttp.ClientSession() as session:
            sources = {
                name: SourceClient(source, session) for name, source in registry.sources.items()
            }
            store_runs = ReconciliationStore(pool, settings.writeback.database_url)
            reconciler = Reconciler(registry, store, sources, sampler, store_runs)
            names = reconciler.reconcilable() if args.all else args.feature
            for name in names:
                run = await reconciler.run(
                    name, sample=args.sample, repair=args.repair, entity_ids=args.entity
                )
                if run is not None:
                    runs.append(run)
    except ReconciliationError as exc:
        print(f"scoregate reconcile: {exc}", file=sys.stderr)
        return 2
    except AuditUnavailable as exc:
        print(f"scoregate reconcile: PostgreSQL: {exc}", file=sys.stderr)
        return 1
    finally:
        await pool.close()
        await sampler.close()
        await store.close()
    _print(runs, args.format)
    return 0


def _print(runs: list[ReconciliationRun], style: str) -> None:
    if style == "json":
        print(msgspec.json.format(msgspec.json.encode(runs), indent=2).decode())
        return
    rows = [[str(row[column]) for column in _COLUMNS] for row in summary(runs)]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(_COLUMNS)]
    for line in [list(_COLUMNS), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
