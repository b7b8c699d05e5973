"""An ingest worker that dies by SIGKILL at its first offset commit.

Run as ``python -m tests.support.ingest_crash`` with the worker's ``SCOREGATE_*``
variables. The batch it took is in Redis by then, and Kafka has not heard of it: the
moment a crash costs the most.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from aiokafka import AIOKafkaConsumer

from gateway.ingest.worker import IngestSettings, IngestWorker


async def _die(self: AIOKafkaConsumer, offsets: Any = None) -> None:
    print("killed before the commit", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


async def main() -> None:
    AIOKafkaConsumer.commit = _die  # type: ignore[method-assign]
    worker = IngestWorker(IngestSettings.from_env(os.environ))
    await worker.start()
    await worker.run(asyncio.Event())


if __name__ == "__main__":
    asyncio.run(main())
