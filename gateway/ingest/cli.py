"""``scoregate ingest``: run a worker, see its lag, pause and resume topics, backfill.

- ``scoregate ingest [--from-timestamp T | --from-offsets topic:partition:offset,...]``
  runs one worker of the group until SIGTERM or Ctrl-C (the batch in hand is
  finished and committed first); a replay starts the partitions it is given where it
  says, once, and the compare-and-set keeps anything newer in the store;
- ``scoregate ingest status`` prints, per partition of every stream's topic, the
  group's committed offset, the end offset and the lag between them (JSON);
- ``scoregate ingest pause TOPIC`` / ``resume TOPIC`` pause or resume a topic on every
  worker, within a second;
- ``scoregate ingest backfill FILE`` writes the feature-update events of a JSON Lines
  file (one structured CloudEvent per line) through the same compare-and-set.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import start_http_server

from gateway.deadline import Deadline
from gateway.features.online_store import to_millis
from gateway.ingest.decoding import decode_backfill_line
from gateway.ingest.records import RecordRejected
from gateway.ingest.worker import IngestSettings, IngestWorker, Replay, entity_write

log = logging.getLogger(__name__)

_BACKFILL_BATCH = 1000


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ingest`` and its subcommands to the ``scoregate`` parser.

    Args:
        commands: The subcommands of the ``scoregate`` parser.
    """
    ingest = commands.add_parser("ingest", help="keep the online store fresh from Kafka")
    ingest.set_defaults(run=_in_loop(_run))
    start = ingest.add_mutually_exclusive_group()
    start.add_argument(
        "--from-timestamp",
        type=_moment,
        help="replay every partition from this time (ISO 8601; UTC without an offset)",
    )
    start.add_argument(
        "--from-offsets",
        type=_offsets,
        help="replay these partitions from these offsets: topic:partition:offset,...",
    )
    actions = ingest.add_subparsers(dest="ingest_command")
    status = actions.add_parser("status", help="committed offset, end offset and lag (JSON)")
    status.set_defaults(run=_in_loop(_status))
    for name, verb in (("pause", "pause"), ("resume", "resume")):
        control = actions.add_parser(name, help=f"{verb} a topic on every worker")
        control.add_argument("topic")
        control.set_defaults(run=_in_loop(_control))
    backfill = actions.add_parser("backfill", help="write a JSON Lines file of feature updates")
    backfill.add_argument("file", type=Path)
    backfill.set_defaults(run=_in_loop(_backfill))


def _in_loop(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        # uvloop, as the gateway serves with: the worker spends much of its time in the loop.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(command(args))

    return run


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date and time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _offsets(text: str) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for part in text.split(","):
        topic, _, rest = part.strip().rpartition(":")
        topic, _, partition = topic.rpartition(":")
        if not topic or not partition.isdigit() or not rest.isdigit():
            raise argparse.ArgumentTypeError(f"expected topic:partition:offset, got {part!r}")
        offsets[TopicPartition(topic, int(partition))] = int(rest)
    return offsets


async def _run(args: argparse.Namespace) -> int:
    settings = IngestSettings.from_env(os.environ)
    replay = None
    if args.from_timestamp is not None or args.from_offsets is not None:
        replay = Replay(from_time=args.from_timestamp, offsets=args.from_offsets)
    worker = IngestWorker(settings, replay=replay)
    unknown = {tp.topic for tp in (args.from_offsets or {})} - set(worker.topics)
    if unknown:
        print(f"scoregate: no stream reads {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="0.0.0.0")  # noqa: S104 - scraped from outside
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    _collect_less()
    log.info("ingesting %s as group %s", ", ".join(worker.topics), settings.group_id)
    try:
        await worker.run(stop)
    finally:
        await worker.stop()
    print(json.dumps(msgspec.structs.asdict(worker.report)))
    return 0


_YOUNG_COLLECTION_EVERY = 50_000
"""Allocations between collections of the youngest generation (Python's default: 700)."""


def _collect_less() -> None:
    """Let the garbage collector run less often in a worker process.

    A batch allocates several objects per record, all short-lived and none in a
    reference cycle, and it stays in hand while it is written: at the default
    threshold the collector keeps scanning the batch, which cost as much as decoding
    it. What start-up made (the registry, the clients) is frozen out of its scans.
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_COLLECTION_EVERY, older, oldest)


async def _status(args: argparse.Namespace) -> int:
    settings = IngestSettings.from_env(os.environ)
    worker = IngestWorker(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.kafka_bootstrap,
        group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in worker.topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = await consumer.end_offsets(partitions) if partitions else {}
        rows = []
        for tp in partitions:
            committed = await consumer.committed(tp)
            end = ends.get(tp, 0)
            rows.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed": committed,
                    "end": end,
                    "lag": end - (committed or 0),
                }
            )
        paused = sorted(await worker.controls.paused())
    finally:
        await consumer.stop()
        await worker.stop()
    print(json.dumps({"group": settings.group_id, "paused": paused, "partitions": rows}, indent=2))
    return 0


async def _control(args: argparse.Namespace) -> int:
    settings = IngestSettings.from_env(os.environ)
    worker = IngestWorker(settings)
    try:
        if args.topic not in worker.topics:
            print(f"scoregate: no stream reads {args.topic}", file=sys.stderr)
            return 2
        if args.ingest_command == "pause":
            await worker.controls.pause(args.topic)
        else:
            await worker.controls.resume(args.topic)
    finally:
        await worker.stop()
    print(f"{args.topic}: {args.ingest_command}d")
    return 0


def _lines(path: Path, size: int) -> Iterator[list[bytes]]:
    with path.open("rb") as lines:
        chunk: list[bytes] = []
        for line in lines:
            if line.strip():
                chunk.append(line)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


async def _backfill(args: argparse.Namespace) -> int:
    settings = IngestSettings.from_env(os.environ)
    worker = IngestWorker(settings)
    counts = {"lines": 0, "written": 0, "older": 0, "duplicate": 0, "rejected": 0}
    chunks = _lines(args.file, _BACKFILL_BATCH)
    try:
        await worker.store.open()
        while chunk := await asyncio.to_thread(next, chunks, None):
            now_ms = to_millis(datetime.now(UTC))
            writes = []
            for number, line in enumerate(chunk, start=counts["lines"] + 1):
                try:
                    decoded = decode_backfill_line(line, worker.registry)
                except RecordRejected as exc:
                    counts["rejected"] += 1
                    print(f"line {number}: {exc.kind}: {exc.detail}", file=sys.stderr)
                    continue
                writes += [entity_write(change, now_ms) for change in decoded.changes]
            counts["lines"] += len(chunk)
            for outcome in await worker.store.write_many(writes, Deadline(30)):
                for result in outcome.values():
                    counts[result] += 1
    except OSError as exc:
        print(f"scoregate: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    finally:
        await worker.stop()
    print(json.dumps(counts))
    return 1 if counts["rejected"] else 0
