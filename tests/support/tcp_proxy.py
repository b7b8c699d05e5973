"""A TCP proxy a test can cut and restore: an outage that clients see as one.

Cutting it closes the listening socket (new connections are refused) and aborts
every open connection in both directions; restoring it listens again on the same
port, so clients reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib

from scoregate_dev.broker import free_port


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``host:target_port``.

    Args:
        target_port: Where connections go (PostgreSQL by default).
        host: The target's host.
    """

    def __init__(self, target_port: int = 5432, host: str = "127.0.0.1") -> None:
        self._host = host
        self._target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    def dsn(self, database_url: str) -> str:
        """``database_url`` (a ``postgresql://user@host:port/db`` URL) through this proxy."""
        base, _, name = database_url.rpartition("/")
        user = base.rpartition("@")[0]
        return f"{user}@127.0.0.1:{self.port}/{name}"

    async def start(self) -> None:
        """Listen (again) and forward."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Cut: refuse new connections and abort the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self._host, self._target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
        self._writers.discard(sink)
