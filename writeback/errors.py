"""The errors of the write-back side, raised by every part of it.

:class:`AuditUnavailable` means PostgreSQL could not be reached or used, whichever part
tried; the others say what is wrong with what a caller gave.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

from contracts.decisions import DecisionRecord

STORE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""Failures to reach or use PostgreSQL (a server, a connection or a statement gone wrong)."""


class AuditUnavailable(Exception):
    """The audit store could not commit or read a decision.

    No decision may be given that cannot be audited, so callers answer 503.

    Args:
        message: What could not be done; the cause's repr, if any, is appended.

    Attributes:
        cause: The error from PostgreSQL or the connection, if any.
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message if cause is None else f"{message}: {cause!r}")
        self.cause = cause
        self.__cause__ = cause


class RecordRefused(Exception):
    """PostgreSQL cannot keep a value of one decision record; nothing of it is committed.

    The value is the record's, so a retry cannot help; the decisions committed beside
    it are not affected.

    Args:
        field: Where the value sits in the record, or None if it cannot be told.
        reason: What is wrong with it.
        cause: PostgreSQL's (or asyncpg's) error, if the record reached it.

    Attributes:
        field: Where the value sits in the record (``request_id``, ``subject.id``,
            ``lineage.<id>.source_ref``), or None if it cannot be told.
        reason: What is wrong with it.
        cause: PostgreSQL's (or asyncpg's) error, if the record reached it.
    """

    def __init__(self, field: str | None, reason: str, cause: BaseException | None = None) -> None:
        where = "a value" if field is None else f"the value of {field}"
        super().__init__(f"PostgreSQL cannot store {where} of the decision record: {reason}")
        self.field = field
        self.reason = reason
        self.cause = cause
        self.__cause__ = cause


class RequestMismatch(Exception):
    """A request id is reused for a request other than the one it was first used for.

    The two fingerprints differ: the earlier request asked for another model, other
    entities or another context.

    Args:
        existing: The decision committed under the request id.

    Attributes:
        existing: The decision committed under the request id.
    """

    def __init__(self, existing: DecisionRecord) -> None:
        super().__init__(
            f"request {existing.request_id!r} of {existing.caller!r} was committed"
            " for a different request"
        )
        self.existing = existing


class BadCursor(ValueError):
    """The cursor was not made by :meth:`~writeback.decision_reads.DecisionReads.search`."""


class BadDeadLetterCursor(ValueError):
    """The cursor was not given out by :meth:`~writeback.dead_letters.DeadLetterQueue.list`."""


class NotDeadLettered(Exception):
    """A redrive of an event that is not in the dead-letter queue.

    Args:
        event_id: The event's id, for the message.
        status: Where the event stands.

    Attributes:
        status: Where the event stands (``pending`` or ``delivered``).
    """

    def __init__(self, event_id: str, status: str) -> None:
        super().__init__(f"event {event_id} is {status}, not dead-lettered")
        self.status = status


@contextlib.contextmanager
def unavailable_on_error(action: str) -> Iterator[None]:
    """Turn a failure to reach or use PostgreSQL inside the block into AuditUnavailable.

    Args:
        action: What the block does, for the message (``could not <action>``).

    Raises:
        AuditUnavailable: The block raised one of :data:`STORE_ERRORS`; that error is
            its cause.
    """
    try:
        yield
    except STORE_ERRORS as exc:
        raise AuditUnavailable(f"could not {action}", exc) from exc
