"""Open Inference Protocol mapping: the request a row becomes, the outputs an answer gives.

No model server: the request is built and encoded in memory, answers are decoded from
bytes as a server would send them, and ``infer`` runs against a session stand-in that
answers each POST with a given status and body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest

from contracts.inference import InferResponse
from contracts.registry import BreakerPolicy, Model, ModelInput, RetryPolicy
from gateway.deadline import Deadline
from gateway.errors import Unavailable
from gateway.model_client import ModelClient, ModelRejected, _error_text

VECTOR = [("kyc_level", "int64"), ("amount", "float64"), ("card_present", "bool"), ("ch", "string")]


def model(layout: ModelInput, endpoint: str = "http://model.invalid/") -> Model:
    return Model(
        name="fraud",
        version="3",
        subject="customer",
        endpoint=endpoint,
        features=["kyc_level"],
        input=layout,
        retry=RetryPolicy(attempts=2, backoff_ms=0, max_backoff_ms=0),
        breaker=BreakerPolicy(fail_max=100),
    )


class _Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self._body = body

    async def read(self) -> bytes:
        return self._body


class FakeSession:
    """``post`` of an aiohttp session: records each call and answers from a list."""

    connector = None

    def __init__(self, *answers: tuple[int, bytes]) -> None:
        self.answers = list(answers)
        self.posts: list[tuple[str, Any]] = []

    @asynccontextmanager
    async def post(self, url: str, data: bytes, headers: dict[str, str]) -> AsyncIterator[_Answer]:
        self.posts.append((url, msgspec.json.decode(data)))
        status, body = self.answers.pop(0)
        yield _Answer(status, body)


def client(layout: ModelInput, session: object = None, **kwargs: Any) -> ModelClient:
    return ModelClient(model(layout, **kwargs), VECTOR, session or FakeSession())  # type: ignore[arg-type]


def test_a_tensor_row_is_one_1_by_n_input_of_floats() -> None:
    tensor = client(ModelInput(layout="tensor", name="x", datatype="FP32"))
    encoded = msgspec.json.encode(tensor.request("d-1", [2, 12.5, True, 0]))
    # Spelled as floats on the wire: 2.0, not 2; 1.0, not true.
    assert b'"data":[2.0,12.5,1.0,0.0]' in encoded
    body = msgspec.json.decode(encoded)
    assert body == {
        "id": "d-1",
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [2.0, 12.5, 1.0, 0.0]}
        ],
    }


def test_a_columns_row_is_one_named_input_per_feature_with_its_own_datatype() -> None:
    columns = client(ModelInput(layout="columns"))
    body = msgspec.json.decode(msgspec.json.encode(columns.request("d-2", [2, 12.5, True, "web"])))
    assert body == {
        "id": "d-2",
        "inputs": [
            {"name": "kyc_level", "shape": [1], "datatype": "INT64", "data": [2]},
            {"name": "amount", "shape": [1], "datatype": "FP64", "data": [12.5]},
            {"name": "card_present", "shape": [1], "datatype": "BOOL", "data": [True]},
            {"name": "ch", "shape": [1], "datatype": "BYTES", "data": ["web"]},
        ],
    }


def test_a_columns_row_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="zip"):
        client(ModelInput(layout="columns")).request("d-3", [2, 12.5])


def outputs(answer: dict[str, Any]) -> dict[str, Any]:
    return ModelClient._outputs(
        msgspec.json.decode(msgspec.json.encode(answer), type=InferResponse)
    )


def out(name: str, shape: list[int], data: list[Any], datatype: str = "FP64") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (out("p", [1], [0.7]), 0.7),
        (out("p", [1, 1], [[0.7]]), 0.7),
        (out("p", [1, 2], [0.1, 0.9]), [0.1, 0.9]),
        (out("p", [1, 2], [[0.1, 0.9]]), [0.1, 0.9]),
        (out("p", [2, 2], [[1, 2], [3, 4]], "INT64"), [1, 2, 3, 4]),
        (out("p", [1, 0], []), []),
        (out("label", [1], ["block"], "BYTES"), "block"),
    ],
)
def test_outputs_are_read_row_major_and_one_element_is_a_scalar(
    output: dict[str, Any], expected: Any
) -> None:
    assert outputs({"model_name": "fraud", "outputs": [output]}) == {output["name"]: expected}


def test_every_output_is_kept_by_name_and_unknown_answer_fields_are_ignored() -> None:
    answer = {
        "model_name": "fraud",
        "model_version": "3",
        "outputs": [out("p", [1], [0.2]), out("flag", [1], [True], "BOOL")],
        "server_extra": {"took_ms": 3},
    }
    assert outputs(answer) == {"p": 0.2, "flag": True}


def test_error_text_is_the_protocol_error_or_the_start_of_the_body() -> None:
    assert _error_text(b'{"error": "input-0: wrong shape"}') == "input-0: wrong shape"
    assert _error_text(b"<html>" + b"x" * 300) == ("<html>" + "x" * 300)[:200]
    assert _error_text(b"\xff oops") == "\ufffd oops"


def test_a_version_is_one_path_segment() -> None:
    versioned = client(ModelInput(), endpoint="http://model.invalid/base/")
    assert versioned._versioned_url("2/../x") == (
        "http://model.invalid/base/v2/models/fraud/versions/2%2F..%2Fx/infer"
    )


async def test_infer_posts_the_row_and_returns_the_outputs() -> None:
    answer = msgspec.json.encode({"model_name": "fraud", "outputs": [out("p", [1, 1], [[0.8]])]})
    session = FakeSession((200, answer))
    tensor = client(ModelInput(), session)
    assert await tensor.infer("d-1", [1, 2.0, False, 0], Deadline(5.0)) == {"p": 0.8}
    [(url, body)] = session.posts
    assert url == "http://model.invalid/v2/models/fraud/infer"
    assert body["inputs"][0]["data"] == [1.0, 2.0, 0.0, 0.0]


async def test_a_4xx_is_the_models_rejection_and_is_not_retried() -> None:
    session = FakeSession((422, b'{"error": "bad input"}'))
    with pytest.raises(ModelRejected) as caught:
        await client(ModelInput(), session).infer("d-1", [1, 2.0, False, 0], Deadline(5.0))
    assert caught.value.status_code == 502
    assert "(422): bad input" in caught.value.detail
    assert len(session.posts) == 1


async def test_an_answer_outside_the_protocol_is_a_rejection() -> None:
    session = FakeSession((200, b'{"outputs": "nope"}'))
    with pytest.raises(ModelRejected, match="outside the protocol"):
        await client(ModelInput(), session).infer("d-1", [1, 2.0, False, 0], Deadline(5.0))


async def test_a_5xx_is_retried_and_then_unavailable() -> None:
    session = FakeSession((503, b""), (500, b""))
    with pytest.raises(Unavailable) as caught:
        await client(ModelInput(), session).infer("d-1", [1, 2.0, False, 0], Deadline(5.0))
    assert caught.value.status_code == 503
    assert caught.value.field == "model"
    assert "answered 500" in caught.value.detail
    assert len(session.posts) == 2


async def test_a_5xx_then_an_answer_succeeds_on_the_retry() -> None:
    answer = msgspec.json.encode({"model_name": "fraud", "outputs": [out("p", [1], [0.1])]})
    session = FakeSession((502, b""), (200, answer))
    result = await client(ModelInput(), session).infer("d-1", [1, 2.0, False, 0], Deadline(5.0))
    assert result == {"p": 0.1}
    assert len(session.posts) == 2
