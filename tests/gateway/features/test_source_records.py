"""Source answers without a source: status mapping, event time, ref, sharing and retries.

A session stand-in answers each GET with a given status and body; a gate holds a call
open where a test needs a call in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from contracts.registry import RetryPolicy, Source
from gateway.deadline import Deadline
from gateway.features.sources import (
    RecordNotFound,
    SourceBusy,
    SourceClient,
    SourceError,
    TransientSourceError,
)

URL = "http://profile.invalid/customers/c-1"


def source(**changes: object) -> Source:
    fields: dict[str, object] = {
        "name": "profile",
        "url": "http://profile.invalid",
        "owner": "t",
        "retry": RetryPolicy(attempts=3, backoff_ms=0, max_backoff_ms=0),
    }
    fields.update(changes)
    return Source(**fields)  # type: ignore[arg-type]


class _Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self._body = body

    async def read(self) -> bytes:
        return self._body


class FakeSession:
    """``get`` of an aiohttp session: records each URL and answers from a list."""

    def __init__(self, *answers: tuple[int, bytes]) -> None:
        self.answers = list(answers)
        self.urls: list[str] = []
        self.gate: asyncio.Event | None = None

    @asynccontextmanager
    async def get(self, url: object, headers: dict[str, str]) -> AsyncIterator[_Answer]:
        self.urls.append(str(url))
        if self.gate is not None:
            await self.gate.wait()
        status, body = self.answers.pop(0)
        yield _Answer(status, body)


def client(session: FakeSession | None = None, **changes: object) -> SourceClient:
    return SourceClient(source(**changes), session)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "error", "transient"),
    [
        (404, RecordNotFound, False),
        (429, TransientSourceError, True),
        (500, TransientSourceError, True),
        (503, TransientSourceError, True),
        (400, SourceError, False),
        (403, SourceError, False),
    ],
)
def test_statuses_map_to_what_the_breaker_and_retries_need(
    status: int, error: type[SourceError], transient: bool
) -> None:
    with pytest.raises(error) as caught:
        client()._record(URL, status, b"{}")
    assert isinstance(caught.value, TransientSourceError) is transient
    assert caught.value.source == "profile"
    assert str(caught.value).startswith("source profile: ")


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"x"', b""])
def test_an_answer_that_is_no_json_object_is_an_error(body: bytes) -> None:
    with pytest.raises(SourceError, match="answered with invalid JSON") as caught:
        client()._record(URL, 200, body)
    assert not isinstance(caught.value, TransientSourceError)


def test_the_event_time_is_the_sources_with_its_offset() -> None:
    record = client()._record(URL, 200, b'{"event_time": "2026-03-01T12:00:00+02:00", "k": 1}')
    assert record.event_time == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert record.event_time.utcoffset() == timedelta(hours=2)
    assert record.body == {"event_time": "2026-03-01T12:00:00+02:00", "k": 1}
    assert record.url == URL


def test_a_naive_event_time_is_taken_as_utc() -> None:
    record = client()._record(URL, 200, b'{"event_time": "2026-03-01T12:00:00"}')
    assert record.event_time == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert record.event_time.tzinfo is UTC


@pytest.mark.parametrize("body", [b"{}", b'{"event_time": 1700000000}', b'{"event_time": null}'])
def test_without_a_string_event_time_the_fetch_time_stands_in(body: bytes) -> None:
    before = datetime.now(UTC)
    record = client()._record(URL, 200, body)
    assert record.event_time == record.fetched_at
    assert before <= record.fetched_at <= datetime.now(UTC)


def test_an_unreadable_event_time_is_an_error_naming_its_field() -> None:
    with pytest.raises(SourceError, match="bad updated"):
        client(event_time_field="updated")._record(URL, 200, b'{"updated": "yesterday"}')


def test_the_event_time_field_is_the_declared_one() -> None:
    body = b'{"event_time": "2020-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z"}'
    record = client(event_time_field="updated")._record(URL, 200, body)
    assert record.event_time == datetime(2026, 1, 1, tzinfo=UTC)


def test_the_ref_is_the_declared_field_else_the_url() -> None:
    assert client(ref_field="id")._record(URL, 200, b'{"id": 42}').ref == "42"
    assert client(ref_field="id")._record(URL, 200, b'{"other": 1}').ref == URL
    assert client()._record(URL, 200, b'{"id": 42}').ref == URL


async def test_the_path_goes_out_as_given_without_requoting() -> None:
    session = FakeSession((200, b"{}"))
    await client(session).fetch("/customers/a%2F..%2Fb/profile", Deadline(60))
    assert session.urls == ["http://profile.invalid/customers/a%2F..%2Fb/profile"]


async def test_concurrent_fetches_of_one_path_share_one_call() -> None:
    session = FakeSession((200, b'{"k": 1}'))
    session.gate = asyncio.Event()
    profile = client(session)
    first = asyncio.create_task(profile.fetch("/c/1", Deadline(60)))
    second = asyncio.create_task(profile.fetch("/c/1", Deadline(60)))
    await asyncio.sleep(0)
    session.gate.set()
    one, two = await asyncio.gather(first, second)
    assert one is two
    assert (profile.calls, profile.shared, len(session.urls)) == (1, 1, 1)


async def test_a_transient_failure_is_retried_and_an_answer_ends_the_retries() -> None:
    session = FakeSession((503, b""), (429, b""), (200, b'{"k": 2}'))
    profile = client(session)
    record = await profile.fetch("/c/1", Deadline(60))
    assert record.body == {"k": 2}
    assert profile.calls == 3


async def test_retries_stop_after_the_declared_attempts() -> None:
    session = FakeSession((500, b""), (500, b""), (500, b""), (200, b"{}"))
    profile = client(session)
    with pytest.raises(TransientSourceError, match="answered 500"):
        await profile.fetch("/c/1", Deadline(60))
    assert profile.calls == 3
    assert profile.breaker.failures == 3


async def test_a_missing_record_is_an_answer_not_retried_and_not_a_failure() -> None:
    session = FakeSession((404, b""), (200, b"{}"))
    profile = client(session)
    with pytest.raises(RecordNotFound):
        await profile.fetch("/c/1", Deadline(60))
    assert profile.calls == 1
    assert profile.breaker.failures == 0


async def test_past_the_concurrency_cap_a_call_is_refused_not_queued() -> None:
    session = FakeSession((200, b"{}"))
    session.gate = asyncio.Event()
    profile = client(session, max_concurrency=1)
    held = asyncio.create_task(profile.fetch("/c/1", Deadline(60)))
    while not session.urls:
        await asyncio.sleep(0)
    with pytest.raises(SourceBusy, match="too many concurrent calls"):
        await profile.fetch("/c/2", Deadline(60))
    session.gate.set()
    await held
    assert profile.calls == 1
    assert profile.breaker.failures == 0
