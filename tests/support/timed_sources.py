"""The sample source APIs with the arrival time of every data call, as a child process.

``python -m tests.support.timed_sources --port N`` serves the sample sources
(``scoregate_dev.sample_sources``, no added latency) and records, for each data call,
its path and when it arrived (the server's monotonic clock, in seconds). ``GET
/_arrivals`` lists them in arrival order; ``DELETE /_arrivals`` forgets them. Tests
count a client's calls per second where the source sees them.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgspec
import uvicorn

from scoregate_dev.sample_sources import create_sources_app

_ARRIVALS = "/_arrivals"


def timed(app: Any) -> Any:
    """``app`` with every data call's arrival recorded and served at ``/_arrivals``."""
    arrivals: list[tuple[float, str]] = []

    async def serve(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == _ARRIVALS:
            if scope["method"] == "DELETE":
                arrivals.clear()
            body = msgspec.json.encode(arrivals)
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http" and not scope["path"].startswith("/_"):
            arrivals.append((time.monotonic(), scope["path"]))
        await app(scope, receive, send)

    return serve


def main() -> None:
    """Serve the timed sample sources until stopped."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        timed(create_sources_app(latency_scale=0)),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
