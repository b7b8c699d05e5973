"""Source APIs: the systems of record features fall back to.

Each source has one :class:`SourceClient`: a breaker, a cap on concurrent calls,
retries with backoff inside the request's deadline, and single-flight, so that
concurrent requests needing the same record share one call. Only the source's own
timeout, its connection errors and its error answers count against its breaker: a call
cut short by the request's deadline, and one the cap refused (:class:`SourceBusy`),
do not.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
from opentelemetry.trace import SpanKind
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base
from yarl import URL

from contracts.registry import Source
from gateway.breaker import DependencyBreaker
from gateway.deadline import Deadline, DeadlineReached
from gateway.observability import inject, stage
from gateway.retries import call_with_retries

log = logging.getLogger(__name__)

_decode_record = msgspec.json.Decoder(dict[str, Any]).decode


class SourceError(Exception):
    """A source call failed; ``reason`` says how, for the response and the audit."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"source {source}: {reason}")
        self.source = source
        self.reason = reason


class TransientSourceError(SourceError):
    """A failure worth retrying: a timeout, a refused connection, a 5xx."""


class RecordNotFound(SourceError):
    """The source answered that it has no such record (an answer, not a failure)."""


class SourceBusy(SourceError):
    """The source's concurrency cap is reached; the call was not made."""


_RETRY_TRANSIENT = retry_if_exception_type(TransientSourceError)


class SourceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One record fetched from a source.

    Attributes:
        body: the JSON object the source answered with.
        url: the URL it came from.
        event_time: when the business fact happened, per the source (else fetch time).
        fetched_at: when the gateway received it.
        ref: the source's own id of the record, if it gives one, else the URL.
    """

    body: dict[str, Any]
    url: str
    event_time: datetime
    fetched_at: datetime
    ref: str


class _DeadlineStop(stop_base):
    """Stop retrying when the next attempt could not start before the deadline."""

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._deadline.remaining() <= retry_state.upcoming_sleep + 0.001


def _is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, RecordNotFound)


class SourceClient:
    """Calls one source API for the feature assembler."""

    def __init__(self, source: Source, session: aiohttp.ClientSession) -> None:
        self.source = source
        self._session = session
        self._timeout_s = source.timeout_ms / 1000
        self.breaker = DependencyBreaker(
            f"source:{source.name}", source.breaker, is_answer=_is_not_found
        )
        self._in_flight: dict[str, asyncio.Future[SourceRecord]] = {}
        self._slots = asyncio.Semaphore(source.max_concurrency)
        self.calls = 0
        self.shared = 0
        """Fetches that joined a call already in flight instead of making their own."""
        self._stop_after_attempts = stop_after_attempt(source.retry.attempts)
        self._wait = wait_exponential_jitter(
            multiplier=source.retry.backoff_ms / 1000, max=source.retry.max_backoff_ms / 1000
        )

    async def fetch(self, path: str, deadline: Deadline) -> SourceRecord:
        """The record at ``path``; concurrent fetches of one path share one call.

        The shared call spends from the deadline of the fetch that started it. If that
        deadline ends it, a waiter with time left starts the call again on its own.
        """
        while True:
            shared = self._in_flight.get(path)
            if shared is None or shared.done():
                shared = asyncio.ensure_future(self._fetch_with_retries(path, deadline))
                self._in_flight[path] = shared
                shared.add_done_callback(lambda done: self._forget(path, done))
            else:
                self.shared += 1
            try:
                # Shielded: one waiter giving up must not cancel the call the others share.
                async with deadline.limit():
                    return await asyncio.shield(shared)
            except DeadlineReached:
                if deadline.remaining() > 0 and shared.done():
                    continue
                raise

    async def fetch_once(self, path: str, deadline: Deadline) -> SourceRecord:
        """The record at ``path`` from one call: no retry, no call shared with others.

        For callers that budget every call they send (reconciliation): each call here
        is one request to the source, under its breaker, timeout and concurrency cap.
        """
        return await self._fetch_once(path, deadline)

    def _forget(self, path: str, done: asyncio.Future[SourceRecord]) -> None:
        if self._in_flight.get(path) is done:
            del self._in_flight[path]
        if not done.cancelled():
            done.exception()  # retrieved here so an unawaited failure is not logged

    async def _fetch_with_retries(self, path: str, deadline: Deadline) -> SourceRecord:
        return await call_with_retries(
            lambda: self._fetch_once(path, deadline),
            lambda: AsyncRetrying(
                stop=self._stop_after_attempts | _DeadlineStop(deadline),
                wait=self._wait,
                retry=_RETRY_TRANSIENT,
                reraise=True,
            ),
            TransientSourceError,
        )

    async def _fetch_once(self, path: str, deadline: Deadline) -> SourceRecord:
        if self._slots.locked():
            raise SourceBusy(self.source.name, "too many concurrent calls")
        url = f"{self.source.url}{path}"
        with stage(f"source {self.source.name}", SpanKind.CLIENT, {"url.full": url}):
            return await self._call(url, deadline)

    async def _call(self, url: str, deadline: Deadline) -> SourceRecord:
        async with self._slots, self.breaker.guard():
            self.calls += 1
            try:
                async with deadline.limit(self._timeout_s):
                    # encoded=True: the path goes out byte for byte, never re-quoted or
                    # dot-segment-normalised into another path.
                    request_url = URL(url, encoded=True)
                    async with self._session.get(request_url, headers=inject({})) as response:
                        body = await response.read()
                        status = response.status
            except DeadlineReached:
                raise  # the request's budget, not the source, ran out: not retried either
            except TimeoutError as exc:
                raise TransientSourceError(self.source.name, "timed out") from exc
            except aiohttp.ClientError as exc:
                raise TransientSourceError(self.source.name, f"unreachable: {exc}") from exc
            return self._record(url, status, body)

    def _record(self, url: str, status: int, body: bytes) -> SourceRecord:
        name = self.source.name
        if status == 404:
            raise RecordNotFound(name, "no such record")
        if status >= 500 or status == 429:
            raise TransientSourceError(name, f"answered {status}")
        if status >= 400:
            raise SourceError(name, f"answered {status}")
        try:
            data = _decode_record(body)
        except msgspec.DecodeError as exc:
            raise SourceError(name, "answered with invalid JSON") from exc
        fetched_at = datetime.now(UTC)
        event_time = fetched_at
        raw_time = data.get(self.source.event_time_field)
        if isinstance(raw_time, str):
            try:
                event_time = datetime.fromisoformat(raw_time)
            except ValueError as exc:
                raise SourceError(name, f"bad {self.source.event_time_field}") from exc
            if event_time.tzinfo is None:
                event_time = event_time.replace(tzinfo=UTC)
        ref_field = self.source.ref_field
        ref = str(data[ref_field]) if ref_field and ref_field in data else url
        return SourceRecord(
            body=data, url=url, event_time=event_time, fetched_at=fetched_at, ref=ref
        )
