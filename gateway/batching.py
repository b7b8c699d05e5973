"""Dynamic batching: rows for one model that wait while its calls are in flight go as one.

:class:`Batcher` holds the queue of one model's rows and decides when a call goes out
and with which rows, as Triton's dynamic batcher and MLServer's adaptive batching do
on the server side:

- at most ``max_in_flight`` calls are in flight; a row that finds a free slot and
  nobody waiting goes out at once, alone (its call runs in its own task, as an
  unbatched call would), and rows that come while every slot is taken wait: when a
  slot frees, the rows waiting go out together (up to ``max_size``, in order of
  arrival) in a call of their own task;
- with ``max_wait_s`` above 0, a call that would carry fewer than ``max_size`` rows
  waits until the oldest of them has waited that long, or until the batch is full;
- each row keeps its own deadline: one whose deadline passes while it waits leaves
  the queue and is never sent, and one whose deadline passes while its call is in
  flight stops waiting for it. The call itself runs until the latest deadline of its
  rows, so a row with little time left does not cut the budget of the others; a call
  every row has left is cancelled;
- a call that fails fails its own rows only; the next call starts afresh.

:func:`split_outputs` gives each row of a batch its outputs, by position.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from contracts.inference import InferOutput
from gateway.deadline import Deadline, DeadlineReached

T = TypeVar("T")
R = TypeVar("R")


class BatchCancelled(Exception):
    """The call carrying a row was cancelled while the row still waited for it.

    Rows cancel a call only once none waits for it, so this is the event loop stopping.
    """


class BatchShapeError(ValueError):
    """An output does not have the batch dimension its request had."""


def flatten(data: Sequence[Any]) -> Iterator[Any]:
    """The values of nested tensor data in row-major order."""
    for item in data:
        if isinstance(item, list):
            yield from flatten(item)
        else:
            yield item


def _one(values: list[Any]) -> Any:
    # A row's one-element output is a scalar, as for a call of one row.
    return values[0] if len(values) == 1 else values


def split_outputs(outputs: Sequence[InferOutput], rows: int) -> list[dict[str, Any]]:
    """Each row's outputs by name, from the outputs of a call that carried ``rows`` rows.

    Tensor data is row-major, so row ``i`` of an output of shape ``[rows, ...]`` is the
    ``i``-th equal slice of its values; a slice of one value is a scalar. A call of one
    row keeps every value of each output (whatever its shape says), as it always has.

    Raises:
        BatchShapeError: an output of a call of several rows does not have them as
            its first dimension, or its values do not divide into them.
    """
    if rows == 1:
        return [{output.name: _one(list(flatten(output.data))) for output in outputs}]
    split: list[dict[str, Any]] = [{} for _ in range(rows)]
    for output in outputs:
        values = list(flatten(output.data))
        width, rest = divmod(len(values), rows)
        if not output.shape or output.shape[0] != rows or rest:
            raise BatchShapeError(
                f"output {output.name!r} of shape {output.shape} with {len(values)} values"
                f" does not hold {rows} rows"
            )
        for i, row in enumerate(split):
            row[output.name] = _one(values[i * width : (i + 1) * width])
    return split


@dataclass(eq=False, slots=True)
class _Row(Generic[T, R]):
    item: T
    deadline: Deadline
    future: asyncio.Future[R]
    context: contextvars.Context
    queued_at: float


@dataclass(eq=False, slots=True)
class _Batch(Generic[T, R]):
    rows: list[_Row[T, R]]
    waiting: int
    task: asyncio.Task[None] | None = field(default=None)

    def left(self, future: asyncio.Future[R]) -> None:
        """A row's future is done; a row that stopped waiting may leave the call idle."""
        if not future.cancelled():
            return
        self.waiting -= 1
        if self.waiting == 0 and self.task is not None:
            self.task.cancel()  # nobody waits for the answer any more


BatchCall = Callable[[list[T], Deadline], Awaitable[Sequence[R]]]
"""Makes one call for some rows and returns one result per row, in their order.

The batcher ends the call at the deadline it is given (the latest of its rows'); the
call spends from it for what it waits on (connections, retries).
"""


class Batcher(Generic[T, R]):
    """The queue of one model's rows, sent in batches by ``call``.

    Args:
        call: Makes one call with the rows of a batch, in order, and returns their
            results in that order; what it raises is each of those rows' failure.
        max_size: The most rows one call carries.
        max_wait_s: How long the oldest waiting row may be held for a fuller batch.
        max_in_flight: The most calls in flight at once.
    """

    def __init__(
        self,
        call: BatchCall[T, R],
        *,
        max_size: int,
        max_wait_s: float = 0.0,
        max_in_flight: int = 1,
    ) -> None:
        self._call = call
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._max_in_flight = max_in_flight
        self._queue: deque[_Row[T, R]] = deque()
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    @property
    def waiting(self) -> int:
        """Rows in the queue, not yet in a call (rows that left are dropped lazily)."""
        return sum(1 for row in self._queue if not row.future.done())

    @property
    def in_flight(self) -> int:
        """Calls in flight."""
        return self._in_flight

    async def submit(self, item: T, deadline: Deadline) -> R:
        """The result of ``item``, from the call that carries it.

        Raises:
            DeadlineReached: the deadline passed before the row's call answered.
            Exception: whatever the row's call raised.
        """
        remaining = deadline.remaining()
        if remaining <= 0:
            raise DeadlineReached("the request's deadline has passed")
        if self._max_wait_s == 0 and self._in_flight < self._max_in_flight and not self._queue:
            return await self._alone(item, deadline, remaining)
        loop = asyncio.get_running_loop()
        # The call runs in the context of its first row, so its span joins that trace.
        row: _Row[T, R] = _Row(
            item, deadline, loop.create_future(), contextvars.copy_context(), loop.time()
        )
        self._queue.append(row)
        self._pump()
        try:
            async with asyncio.timeout(remaining):
                return await row.future
        except TimeoutError as exc:
            if row.future.done() and not row.future.cancelled():
                # Answered (or failed with a timeout of the call's own) as the deadline
                # came: the answer is there, so it is the row's.
                return row.future.result()
            raise DeadlineReached("the request's deadline ended the wait") from exc
        finally:
            if not row.future.done():
                row.future.cancel()  # the row leaves its queue or its call
            elif not row.future.cancelled():
                row.future.exception()  # retrieved even when the row left as it came

    async def _alone(self, item: T, deadline: Deadline, remaining: float) -> R:
        """Make the call of a row that found a slot free and nobody waiting, in its own task.

        Rows that come while it is in flight wait for the next call, so this call is
        the row's alone: it can run where the row waits, without a task of its own.
        """
        self._in_flight += 1
        limit = asyncio.timeout(remaining)
        try:
            async with limit:
                [result] = await self._call([item], deadline)
        except TimeoutError as exc:
            if limit.expired():
                raise DeadlineReached("the request's deadline ended the call") from exc
            raise
        finally:
            self._in_flight -= 1
            self._pump()
        return result

    def _pump(self) -> None:
        """Start calls while slots are free and rows wait (or arm the wait for more)."""
        loop = asyncio.get_running_loop()
        while self._in_flight < self._max_in_flight:
            while self._queue and self._queue[0].future.done():
                self._queue.popleft()
            if not self._queue:
                return
            if self._max_wait_s > 0 and len(self._queue) < self._max_size:
                due = self._queue[0].queued_at + self._max_wait_s
                if loop.time() < due:
                    self._wake_at(loop, due)
                    return
            self._start(loop)

    def _wake_at(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._timer is not None:
            if self._timer_at == due:
                return
            self._timer.cancel()
        self._timer_at = due
        self._timer = loop.call_at(due, self._woken)

    def _woken(self) -> None:
        self._timer = None
        self._pump()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        rows: list[_Row[T, R]] = []
        while self._queue and len(rows) < self._max_size:
            row = self._queue.popleft()
            if not row.future.done():
                rows.append(row)
        if not rows:
            return
        batch: _Batch[T, R] = _Batch(rows, waiting=len(rows))
        self._in_flight += 1
        task = loop.create_task(self._run(batch), context=rows[0].context)
        batch.task = task
        task.add_done_callback(self._landed)
        for row in rows:
            row.future.add_done_callback(batch.left)

    async def _run(self, batch: _Batch[T, R]) -> None:
        rows = batch.rows
        # The latest deadline: each row stops waiting at its own.
        deadline = max((row.deadline for row in rows), key=lambda d: d.expires_at)
        limit = asyncio.timeout(deadline.remaining())
        try:
            async with limit:
                results = await self._call([row.item for row in rows], deadline)
            answered = list(zip(rows, results, strict=True))
        except asyncio.CancelledError:
            # Only rows that stopped waiting cancel a call; any still waiting are told.
            for row in rows:
                if not row.future.done():
                    row.future.set_exception(BatchCancelled("the call carrying the row stopped"))
            raise
        except Exception as exc:
            failure = exc
            if isinstance(exc, TimeoutError) and limit.expired():
                failure = DeadlineReached("the deadlines of the call's rows ended it")
                failure.__cause__ = exc
            for row in rows:
                if not row.future.done():
                    row.future.set_exception(failure)
            return
        for row, result in answered:
            if not row.future.done():
                row.future.set_result(result)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._in_flight -= 1
        if self._timer is not None and not self._queue:
            self._timer.cancel()
            self._timer = None
        self._pump()
