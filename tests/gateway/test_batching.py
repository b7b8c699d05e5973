"""The batching of one model's rows, with calls the test answers itself.

No server and no sockets: each call the batcher makes waits until the test answers
it, so which rows share a call depends only on what was waiting, never on speed.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import pytest

from contracts.inference import InferOutput
from gateway.batching import Batcher, BatchShapeError, split_outputs
from gateway.deadline import Deadline, DeadlineReached

ROOMY = 60.0


def out(name: str, shape: list[int], data: list[Any]) -> InferOutput:
    return InferOutput(name=name, shape=shape, datatype="FP64", data=data)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (out("p", [3, 1], [0.1, 0.2, 0.3]), [0.1, 0.2, 0.3]),
        (out("p", [3], [0.1, 0.2, 0.3]), [0.1, 0.2, 0.3]),
        (out("p", [3, 1], [[0.1], [0.2], [0.3]]), [0.1, 0.2, 0.3]),
        (out("p", [3, 2], [1, 2, 3, 4, 5, 6]), [[1, 2], [3, 4], [5, 6]]),
        (out("p", [3, 2], [[1, 2], [3, 4], [5, 6]]), [[1, 2], [3, 4], [5, 6]]),
        (out("p", [3, 0], []), [[], [], []]),
    ],
)
def test_each_row_takes_its_slice_in_order(output: InferOutput, expected: list[Any]) -> None:
    assert [row["p"] for row in split_outputs([output], 3)] == expected


def test_every_output_is_split_by_name() -> None:
    rows = split_outputs([out("p", [2, 1], [0.9, 0.1]), out("label", [2], [1, 0])], 2)
    assert rows == [{"p": 0.9, "label": 1}, {"p": 0.1, "label": 0}]


def test_a_call_of_one_row_keeps_every_value_whatever_the_shape() -> None:
    assert split_outputs([out("p", [1, 2], [0.1, 0.9])], 1) == [{"p": [0.1, 0.9]}]
    assert split_outputs([out("p", [], [0.7])], 1) == [{"p": 0.7}]


@pytest.mark.parametrize(
    "output",
    [
        out("p", [1, 3], [0.1, 0.2, 0.3]),  # the rows are not the first dimension
        out("p", [3, 1], [0.1, 0.2]),  # values do not divide into the rows
        out("p", [], [0.1, 0.2, 0.3]),  # no batch dimension at all
        out("p", [2, 1], [0.1, 0.2]),  # fewer rows than were sent
    ],
)
def test_an_output_without_the_batch_dimension_is_refused(output: InferOutput) -> None:
    with pytest.raises(BatchShapeError, match="does not hold 3 rows"):
        split_outputs([output], 3)


Call = tuple[list[str], Deadline, "asyncio.Future[list[str]]"]


class Calls:
    """A batch call that records its rows and waits for the test to answer it."""

    def __init__(self) -> None:
        self.made: list[Call] = []
        self.cancelled = 0
        self.contexts: list[str | None] = []

    async def __call__(self, items: list[str], deadline: Deadline) -> list[str]:
        answer: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self.made.append((items, deadline, answer))
        self.contexts.append(REQUEST.get(None))
        try:
            return await answer
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    @property
    def rows(self) -> list[list[str]]:
        return [items for items, _, _ in self.made]

    def answer(self, index: int) -> None:
        items, _, answer = self.made[index]
        answer.set_result([f"{item}!" for item in items])

    def fail(self, index: int, exc: Exception) -> None:
        self.made[index][2].set_exception(exc)


REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request")


async def until(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(ROOMY):
            while not condition():
                await asyncio.sleep(0)
    except TimeoutError:
        pytest.fail(f"{what} did not happen")


def submit(batcher: Batcher[str, str], item: str, budget_s: float = ROOMY) -> asyncio.Task[str]:
    async def run() -> str:
        REQUEST.set(item)
        return await batcher.submit(item, Deadline(budget_s))

    return asyncio.create_task(run())


async def settle(tasks: list[asyncio.Task[str]]) -> list[Any]:
    return await asyncio.gather(*tasks, return_exceptions=True)


def waits(batcher: Batcher[str, str], rows: int) -> Callable[[], bool]:
    return lambda: batcher.waiting == rows


async def test_the_first_row_goes_at_once_and_rows_that_wait_go_together_in_order() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=8)
    first = submit(batcher, "a")
    await until(lambda: len(calls.made) == 1, "the first call")
    later = [submit(batcher, item) for item in "bcd"]
    await until(waits(batcher, 3), "three rows waiting")
    assert calls.rows == [["a"]]
    calls.answer(0)
    await until(lambda: len(calls.made) == 2, "the second call")
    assert calls.rows == [["a"], ["b", "c", "d"]]
    calls.answer(1)
    assert await settle([first, *later]) == ["a!", "b!", "c!", "d!"]
    assert batcher.in_flight == 0


async def test_no_call_carries_more_than_max_size_rows() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=3)
    tasks = [submit(batcher, "r0")]
    await until(lambda: len(calls.made) == 1, "the first call")
    tasks += [submit(batcher, f"r{i}") for i in range(1, 8)]
    await until(waits(batcher, 7), "seven rows waiting")
    for index in range(4):
        await until(lambda i=index: len(calls.made) == i + 1, f"call {index}")  # type: ignore[misc]
        calls.answer(index)
    assert calls.rows == [["r0"], ["r1", "r2", "r3"], ["r4", "r5", "r6"], ["r7"]]
    assert await settle(tasks) == [f"r{i}!" for i in range(8)]


async def test_a_row_whose_deadline_passes_while_it_waits_leaves_and_is_never_sent() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=8)
    first = submit(batcher, "a")
    await until(lambda: len(calls.made) == 1, "the first call")
    hurried = submit(batcher, "hurried", budget_s=0.05)
    patient = submit(batcher, "patient")
    with pytest.raises(DeadlineReached):
        await hurried
    calls.answer(0)
    await until(lambda: len(calls.made) == 2, "the second call")
    assert calls.rows[1] == ["patient"]
    calls.answer(1)
    assert await settle([first, patient]) == ["a!", "patient!"]


async def test_a_row_whose_deadline_passes_in_flight_stops_waiting_but_the_call_goes_on() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=8)
    first = submit(batcher, "a")
    await until(lambda: len(calls.made) == 1, "the first call")
    hurried = submit(batcher, "hurried", budget_s=1.0)
    patient = submit(batcher, "patient")
    await until(waits(batcher, 2), "two rows waiting")
    calls.answer(0)
    await until(lambda: len(calls.made) == 2, "the second call")
    assert calls.rows[1] == ["hurried", "patient"]
    # The call may run until the latest deadline of its rows, not the earliest.
    _, deadline, _ = calls.made[1]
    assert deadline.budget_s == ROOMY
    with pytest.raises(DeadlineReached):
        await hurried
    assert calls.cancelled == 0
    calls.answer(1)
    assert await settle([first, patient]) == ["a!", "patient!"]


async def test_a_call_every_row_has_left_is_cancelled_and_frees_its_slot() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=8)
    gone = [submit(batcher, "a"), submit(batcher, "b")]
    await until(lambda: len(calls.made) == 1, "the first call")
    await until(waits(batcher, 1), "one row waiting")
    for task in gone:
        task.cancel()
    await settle(gone)
    await until(lambda: calls.cancelled == 1, "the first call cancelled")
    # The waiting row left too, so the next row goes at once, alone.
    after = submit(batcher, "c")
    await until(lambda: len(calls.made) == 2, "the next call")
    assert calls.rows[1] == ["c"]
    calls.answer(1)
    assert await after == "c!"


async def test_a_failed_call_fails_only_its_own_rows() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=8)
    first = submit(batcher, "a")
    await until(lambda: len(calls.made) == 1, "the first call")
    failing = [submit(batcher, "b"), submit(batcher, "c")]
    await until(waits(batcher, 2), "two rows waiting")
    calls.answer(0)
    await until(lambda: len(calls.made) == 2, "the second call")
    last = submit(batcher, "d")
    await until(waits(batcher, 1), "one row waiting")
    calls.fail(1, ConnectionError("down"))
    await until(lambda: len(calls.made) == 3, "the third call")
    calls.answer(2)
    a, b, c, d = await settle([first, *failing, last])
    assert (a, d) == ("a!", "d!")
    assert isinstance(b, ConnectionError)
    assert isinstance(c, ConnectionError)


async def test_up_to_max_in_flight_calls_go_at_once() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=8, max_in_flight=2)
    tasks = [submit(batcher, "a")]
    await until(lambda: len(calls.made) == 1, "the first call")
    tasks.append(submit(batcher, "b"))
    await until(lambda: len(calls.made) == 2, "the second call")
    tasks += [submit(batcher, "c"), submit(batcher, "d")]
    await until(waits(batcher, 2), "two rows waiting")
    assert batcher.in_flight == 2
    calls.answer(1)
    await until(lambda: len(calls.made) == 3, "the third call")
    calls.answer(0)
    calls.answer(2)
    assert calls.rows == [["a"], ["b"], ["c", "d"]]
    assert await settle(tasks) == ["a!", "b!", "c!", "d!"]


async def test_with_a_wait_a_full_batch_goes_at_once() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=3, max_wait_s=ROOMY)
    tasks = [submit(batcher, item) for item in "ab"]
    await until(waits(batcher, 2), "two rows waiting")
    assert calls.made == []
    tasks.append(submit(batcher, "c"))
    await until(lambda: len(calls.made) == 1, "the full call")
    calls.answer(0)
    assert calls.rows == [["a", "b", "c"]]
    assert await settle(tasks) == ["a!", "b!", "c!"]


async def test_with_a_wait_a_lone_row_goes_once_it_has_waited() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=3, max_wait_s=0.01)
    task = submit(batcher, "a")
    await until(lambda: len(calls.made) == 1, "the call")
    calls.answer(0)
    assert await task == "a!"


async def test_the_call_runs_in_the_context_of_its_first_row() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=8)
    tasks = [submit(batcher, "a")]
    await until(lambda: len(calls.made) == 1, "the first call")
    tasks += [submit(batcher, "b"), submit(batcher, "c")]
    await until(waits(batcher, 2), "two rows waiting")
    calls.answer(0)
    await until(lambda: len(calls.made) == 2, "the second call")
    calls.answer(1)
    await settle(tasks)
    assert calls.contexts == ["a", "b"]


async def test_a_row_past_its_deadline_is_not_queued() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=8)
    with pytest.raises(DeadlineReached):
        await batcher.submit("late", Deadline(0))
    assert calls.made == []
    assert batcher.waiting == 0


async def test_a_lone_row_past_its_deadline_in_flight_ends_its_call() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=8)
    with pytest.raises(DeadlineReached):
        await batcher.submit("alone", Deadline(0.05))
    assert calls.rows == [["alone"]]
    assert calls.cancelled == 1
    assert batcher.in_flight == 0


async def test_a_lone_rows_own_failure_is_its_answer() -> None:
    calls = Calls()
    batcher = Batcher(calls, max_size=8)
    task = submit(batcher, "a")
    await until(lambda: len(calls.made) == 1, "the call")
    calls.fail(0, TimeoutError("the call's own"))
    with pytest.raises(TimeoutError, match="the call's own"):
        await task
    assert batcher.in_flight == 0
