"""A fast Open Inference Protocol v2 model server with a real fraud model and switchable faults.

It stands in for production model serving in local runs, tests and benchmarks. The model
``fraud`` version ``3`` is a logistic regression fitted at start-up on a deterministic
synthetic data set, so its scores respond to risk the way a real fraud model's would.

Run it with ``python -m scoregate_dev.sample_model --port 8200``.
"""

import argparse
import asyncio
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import uvicorn
from litestar import Litestar, Request, Response, delete, get, put
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.types import Receive, Scope, Send

from contracts.inference import InferError, InferInput, InferOutput, InferRequest, InferResponse
from scoregate_dev.sample_sources import (
    NO_FAULT,
    FaultSpec,
    FaultSwitch,
    error_response,
    hold_until_disconnect,
    http_exception_as_error,
)

MODEL_NAME = "fraud"
MODEL_VERSION = "3"
SERVER_NAME = "scoregate-sample-model"
SERVER_VERSION = "1.0.0"
TENSOR_INPUT = "input-0"

FEATURES: tuple[str, ...] = (
    "txn_count_30m",
    "txn_amount_sum_24h",
    "distinct_merchants_7d",
    "account_age_days",
    "kyc_level",
    "country_risk",
    "chargeback_rate_90d",
    "amount",
    "card_present",
)
"""Model inputs, in the column order of the ``input-0`` tensor."""

WIDTH = len(FEATURES)
# Money amounts and account age are heavy-tailed; the model sees their log1p.
_LOG_COLUMNS = frozenset({1, 3, 7})
# Below this many rows plain Python beats numpy, whose per-call overhead dominates.
NUMPY_MIN_ROWS = 16


FloatArray = npt.NDArray[np.float64]


class FraudModel:
    """Logistic regression over the nine fraud features.

    Money amounts and account age enter as log1p, then standardised. The standardisation
    is folded into ``weights`` and ``bias``, so scoring a row is one dot product over the
    transformed features.
    """

    def __init__(
        self,
        means: Sequence[float],
        stds: Sequence[float],
        coefs: Sequence[float],
        intercept: float,
    ) -> None:
        """Build the model from fitted parameters.

        Args:
            means: Mean of each transformed feature in the training data.
            stds: Standard deviation of each transformed feature.
            coefs: Weight of each standardised feature.
            intercept: Bias on the standardised scale.
        """
        self.means = tuple(means)
        self.stds = tuple(stds)
        self.coefs = tuple(coefs)
        self.intercept = intercept
        self.weights = tuple(c / s for c, s in zip(self.coefs, self.stds, strict=True))
        self.bias = intercept - sum(
            c * m / s for c, m, s in zip(self.coefs, self.means, self.stds, strict=True)
        )
        self._weights_array: FloatArray = np.asarray(self.weights, dtype=np.float64)
        self._log_mask = np.array([j in _LOG_COLUMNS for j in range(WIDTH)])

    @classmethod
    def fit_synthetic(
        cls, seed: int = 20_240_603, rows: int = 4000, steps: int = 300
    ) -> "FraudModel":
        """Fit the model on a deterministic synthetic labelled data set.

        Args:
            seed: Seed of the data set.
            rows: Number of training rows.
            steps: Gradient-descent steps.

        Returns:
            The fitted model.
        """
        features, labels = synthetic_fraud_data(seed, rows)
        transformed = _transform(features)
        means = transformed.mean(axis=0)
        stds = transformed.std(axis=0)
        stds[stds == 0] = 1.0
        scaled = (transformed - means) / stds
        coefs = np.zeros(WIDTH)
        intercept = 0.0
        learning_rate, l2 = 0.5, 1e-3
        for _ in range(steps):
            probs = _sigmoid_array(scaled @ coefs + intercept)
            residual = probs - labels
            coefs -= learning_rate * (scaled.T @ residual / rows + l2 * coefs)
            intercept -= learning_rate * float(residual.mean())
        return cls(means.tolist(), stds.tolist(), coefs.tolist(), intercept)

    def predict_columns(self, columns: Sequence[Sequence[float]], rows: int) -> list[float]:
        """Score rows given as nine equally long feature columns.

        Args:
            columns: One sequence per feature, in ``FEATURES`` order.
            rows: Number of rows.

        Returns:
            Probability of fraud per row.
        """
        if rows >= NUMPY_MIN_ROWS:
            matrix = np.asarray(columns, dtype=np.float64).T
            return self._predict_matrix(matrix)
        return [self._predict_row(row) for row in zip(*columns, strict=True)]

    def predict_flat(self, flat: Sequence[float], rows: int) -> list[float]:
        """Score rows given as one row-major flat list of ``rows * 9`` values.

        Args:
            flat: Row-major feature values.
            rows: Number of rows.

        Returns:
            Probability of fraud per row.
        """
        if rows >= NUMPY_MIN_ROWS:
            matrix = np.asarray(flat, dtype=np.float64).reshape(rows, WIDTH)
            return self._predict_matrix(matrix)
        return [self._predict_row(flat[i : i + WIDTH]) for i in range(0, rows * WIDTH, WIDTH)]

    def _predict_row(self, row: Sequence[float]) -> float:
        w = self.weights
        log1p = math.log1p
        z = (
            self.bias
            + w[0] * row[0]
            + w[1] * log1p(max(row[1], 0.0))
            + w[2] * row[2]
            + w[3] * log1p(max(row[3], 0.0))
            + w[4] * row[4]
            + w[5] * row[5]
            + w[6] * row[6]
            + w[7] * log1p(max(row[7], 0.0))
            + w[8] * row[8]
        )
        # Split by sign so exp never overflows for extreme inputs.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def _predict_matrix(self, matrix: FloatArray) -> list[float]:
        transformed = _transform(matrix, self._log_mask)
        probs: list[float] = _sigmoid_array(transformed @ self._weights_array + self.bias).tolist()
        return probs


def _transform(matrix: FloatArray, log_mask: npt.NDArray[np.bool_] | None = None) -> FloatArray:
    if log_mask is None:
        log_mask = np.array([j in _LOG_COLUMNS for j in range(WIDTH)])
    out = matrix.astype(np.float64, copy=True)
    out[:, log_mask] = np.log1p(np.maximum(out[:, log_mask], 0.0))
    return out


def _sigmoid_array(z: FloatArray) -> FloatArray:
    # Clipping keeps exp finite; probabilities this extreme are 0 or 1 in float64 anyway.
    result: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))
    return result


def synthetic_fraud_data(seed: int, rows: int) -> tuple[FloatArray, FloatArray]:
    """Draw a labelled data set from a plausible story of card fraud.

    A minority of actors are fraudsters: their accounts are young with weak KYC in risky
    countries, they transact fast across many merchants, favour merchants with high
    chargeback rates, spend more and rarely present the card. Whether a transaction is
    fraud then depends on the actor and on the transaction itself.

    Args:
        seed: Seed of the generator.
        rows: Number of rows.

    Returns:
        ``(features, labels)``: an array of shape ``(rows, 9)`` in ``FEATURES`` order and
        an array of 0/1 labels.
    """
    rng = np.random.default_rng(seed)
    risky = rng.random(rows) < 0.12

    def pick(when_risky: npt.NDArray[Any], otherwise: npt.NDArray[Any]) -> FloatArray:
        chosen: FloatArray = np.where(risky, when_risky, otherwise).astype(np.float64)
        return chosen

    txn_count = pick(rng.poisson(5.0, rows), rng.poisson(0.8, rows))
    amount_sum = pick(
        rng.lognormal(math.log(900.0), 0.8, rows), rng.lognormal(math.log(120.0), 0.9, rows)
    )
    merchants = pick(rng.poisson(14.0, rows), rng.poisson(6.0, rows))
    age = np.clip(
        pick(rng.lognormal(math.log(20.0), 1.0, rows), rng.lognormal(math.log(700.0), 0.8, rows)),
        1.0,
        5000.0,
    ).round()
    kyc = pick(
        rng.choice([1, 2, 3], rows, p=[0.6, 0.3, 0.1]),
        rng.choice([1, 2, 3], rows, p=[0.1, 0.4, 0.5]),
    )
    country = pick(rng.beta(5.0, 3.0, rows), rng.beta(2.0, 8.0, rows))
    chargeback = np.clip(pick(rng.beta(2.0, 40.0, rows), rng.beta(1.2, 300.0, rows)), 0.0, 0.2)
    amount = pick(
        rng.lognormal(math.log(250.0), 1.0, rows), rng.lognormal(math.log(45.0), 1.0, rows)
    )
    card_present = pick(rng.random(rows) < 0.1, rng.random(rows) < 0.55)

    logit = (
        -4.5
        + 3.5 * risky
        + 0.5 * (np.log(amount) - math.log(45.0))
        - 1.2 * card_present
        + 8.0 * chargeback
    )
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)
    features = np.column_stack(
        [txn_count, amount_sum, merchants, age, kyc, country, chargeback, amount, card_present]
    )
    return features, labels


class TensorMetadata(msgspec.Struct, frozen=True):
    """Declared name, datatype and shape of a tensor; -1 marks a variable dimension.

    Attributes:
        name: Tensor name.
        datatype: OIP datatype.
        shape: Shape with -1 for variable dimensions.
    """

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(msgspec.Struct, frozen=True):
    """OIP v2 model metadata.

    Attributes:
        name: Model name.
        versions: Versions served.
        platform: Framework the model runs on.
        inputs: Declared inputs.
        outputs: Declared outputs.
    """

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(msgspec.Struct, frozen=True):
    """OIP v2 server metadata.

    Attributes:
        name: Server name.
        version: Server version.
        extensions: Protocol extensions supported.
    """

    name: str
    version: str
    extensions: list[str]


class ServerReady(msgspec.Struct, frozen=True):
    """Answer of ``/v2/health/ready``.

    Attributes:
        ready: Whether the server accepts inference.
    """

    ready: bool


class ServerLive(msgspec.Struct, frozen=True):
    """Answer of ``/v2/health/live``.

    Attributes:
        live: Whether the server is alive.
    """

    live: bool


class ModelReady(msgspec.Struct, frozen=True):
    """Answer of ``/v2/models/{name}/ready``.

    Attributes:
        name: Model name.
        ready: Whether the model accepts inference.
    """

    name: str
    ready: bool


class ModelStats(msgspec.Struct, frozen=True):
    """Inference work since start or the last reset.

    Attributes:
        infer_calls: Inference requests received, including failed ones.
        rows: Rows scored.
    """

    infer_calls: int
    rows: int


class Refused(Exception):
    """An inference request that must be refused with a given status."""

    def __init__(self, status: int, message: str) -> None:
        """Record the status and message.

        Args:
            status: HTTP status to answer.
            message: Reason given to the client.
        """
        super().__init__(message)
        self.status = status
        self.message = message


MODEL_METADATA = ModelMetadata(
    name=MODEL_NAME,
    versions=[MODEL_VERSION],
    platform="numpy_logistic_regression",
    inputs=[TensorMetadata(name=TENSOR_INPUT, datatype="FP64", shape=[-1, WIDTH])],
    outputs=[
        TensorMetadata(name="probability", datatype="FP64", shape=[-1, 1]),
        TensorMetadata(name="label", datatype="INT64", shape=[-1, 1]),
    ],
)
OUTPUT_NAMES = ("probability", "label")

_REQUEST_DECODER = msgspec.json.Decoder(InferRequest)
_ENCODER = msgspec.json.Encoder()
_INJECTED = _ENCODER.encode(InferError(error="injected"))
# Strict element types per datatype: msgspec.convert rejects, say, a string or 1.5 in
# INT64 data in C, so no Python pass over the values is needed.
_FLAT_TYPES: dict[str, Any] = {
    "FP64": list[float],
    "FP32": list[float],
    "INT64": list[int],
    "BOOL": list[bool],
}
_NESTED_TYPES: dict[str, Any] = {
    "FP64": list[list[float]],
    "FP32": list[list[float]],
    "INT64": list[list[int]],
    "BOOL": list[list[bool]],
}
_TENSOR_DATATYPES = frozenset({"FP64", "FP32", "INT64"})
_COLUMN_DATATYPES = frozenset(_FLAT_TYPES)


def _tensor_values(tensor: InferInput, datatypes: frozenset[str]) -> list[float]:
    """Decode a tensor's values flat in row-major order and check them against its shape."""
    if tensor.datatype not in datatypes:
        raise Refused(400, f"input {tensor.name!r}: unsupported datatype {tensor.datatype}")
    values: list[float]
    try:
        values = msgspec.convert(tensor.data, _FLAT_TYPES[tensor.datatype])
    except msgspec.ValidationError as flat_error:
        # Flat data is the common case; nested rows are tried only when it fails.
        try:
            nested: list[list[float]] = msgspec.convert(tensor.data, _NESTED_TYPES[tensor.datatype])
        except msgspec.ValidationError:
            raise Refused(400, f"input {tensor.name!r}: {flat_error}") from flat_error
        row_length = tensor.shape[-1] if tensor.shape else -1
        if any(len(row) != row_length for row in nested):
            raise Refused(
                400, f"input {tensor.name!r}: nested data does not match shape {tensor.shape}"
            ) from flat_error
        values = list(itertools.chain.from_iterable(nested))
    if any(dim < 0 for dim in tensor.shape) or math.prod(tensor.shape) != len(values):
        raise Refused(
            400, f"input {tensor.name!r}: {len(values)} values do not fit shape {tensor.shape}"
        )
    return values


def _tensor_rows(tensor: InferInput) -> tuple[list[float], int]:
    """Read layout (a): one ``input-0`` tensor of shape ``[N, 9]`` or ``[9]``."""
    if tensor.name != TENSOR_INPUT:
        raise Refused(400, f"unknown input {tensor.name!r}; expected {TENSOR_INPUT!r}")
    shape = tensor.shape
    if len(shape) == 1 and shape[0] == WIDTH:
        rows = 1
    elif len(shape) == 2 and shape[1] == WIDTH:
        rows = shape[0]
    else:
        raise Refused(400, f"input {tensor.name!r}: shape {shape} is not [N, {WIDTH}]")
    return _tensor_values(tensor, _TENSOR_DATATYPES), rows


def _column_values(tensors: list[InferInput]) -> tuple[list[list[float]], int]:
    """Read layout (b): one input per feature, each of shape ``[N]`` or ``[N, 1]``."""
    by_name = {tensor.name: tensor for tensor in tensors}
    unknown = sorted(set(by_name) - set(FEATURES))
    missing = [name for name in FEATURES if name not in by_name]
    if unknown or missing or len(by_name) != len(tensors):
        raise Refused(
            400, f"inputs must be {list(FEATURES)} once each; unknown {unknown}, missing {missing}"
        )
    columns: list[list[float]] = []
    rows = -1
    for name in FEATURES:
        tensor = by_name[name]
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise Refused(400, f"input {name!r}: shape {shape} is not [N] or [N, 1]")
        if rows not in (-1, shape[0]):
            raise Refused(400, "inputs disagree on the batch size")
        rows = shape[0]
        columns.append(_tensor_values(tensor, _COLUMN_DATATYPES))
    return columns, rows


def _selected_outputs(request: InferRequest) -> tuple[str, ...]:
    if request.outputs is None:
        return OUTPUT_NAMES
    names = tuple(output.name for output in request.outputs)
    unknown = [name for name in names if name not in OUTPUT_NAMES]
    if unknown:
        raise Refused(400, f"unknown outputs {unknown}; model has {list(OUTPUT_NAMES)}")
    return names


@dataclass
class ModelService:
    """The served model with its fault switch and counters.

    Attributes:
        model: The fitted fraud model.
        fault: Fault applied to inference calls.
        infer_calls: Inference requests received since the last reset.
        rows: Rows scored since the last reset.
    """

    model: FraudModel
    fault: FaultSwitch = field(default_factory=FaultSwitch)
    infer_calls: int = 0
    rows: int = 0

    @property
    def ready(self) -> bool:
        """Whether readiness probes should pass; only the ``error`` fault fails them."""
        return self.fault.spec.mode != "error"

    def check_model(self, name: str, version: str | None) -> None:
        """Refuse unknown models and versions.

        Args:
            name: Model name from the path.
            version: Version from the path, or None when the path names none.

        Raises:
            Refused: With status 404 when the model or version is not served.
        """
        if name != MODEL_NAME:
            raise Refused(404, f"model {name!r} not found")
        if version is not None and version != MODEL_VERSION:
            raise Refused(404, f"model {name!r} has no version {version!r}")

    def infer(self, body: bytes) -> bytes:
        """Score an encoded inference request.

        Args:
            body: The JSON request body.

        Returns:
            The JSON response body.

        Raises:
            Refused: With status 400 when the request is malformed.
        """
        try:
            request = _REQUEST_DECODER.decode(body)
        except msgspec.DecodeError as exc:
            raise Refused(400, f"invalid inference request: {exc}") from exc
        if not request.inputs:
            raise Refused(400, "request has no inputs")
        selected = _selected_outputs(request)
        if len(request.inputs) == 1:
            flat, rows = _tensor_rows(request.inputs[0])
            probs = self.model.predict_flat(flat, rows)
        else:
            columns, rows = _column_values(request.inputs)
            probs = self.model.predict_columns(columns, rows)
        self.rows += rows
        outputs = []
        for name in selected:
            if name == "probability":
                outputs.append(InferOutput(name=name, shape=[rows, 1], datatype="FP64", data=probs))
            else:
                labels = [1 if p >= 0.5 else 0 for p in probs]
                outputs.append(
                    InferOutput(name=name, shape=[rows, 1], datatype="INT64", data=labels)
                )
        response = InferResponse(
            model_name=MODEL_NAME, model_version=MODEL_VERSION, id=request.id, outputs=outputs
        )
        return _ENCODER.encode(response)

    async def handle_infer(
        self, name: str, version: str | None, body: bytes, receive: Receive
    ) -> tuple[int, bytes]:
        """Serve one inference call: count it, apply the fault, then score.

        Args:
            name: Model name from the path.
            version: Version from the path, or None.
            body: The request body, already read.
            receive: The ASGI receive callable, used to notice a client leaving a hung call.

        Returns:
            ``(status, JSON body)`` of the answer.
        """
        self.infer_calls += 1
        action = self.fault.next_action()
        if action.extra_delay_s > 0:
            await asyncio.sleep(action.extra_delay_s)
        if action.hang:
            await hold_until_disconnect(receive)
            # Only reached once the client has left, so nobody reads this answer.
            return 504, _INJECTED
        if action.fail_status is not None:
            return action.fail_status, _INJECTED
        try:
            self.check_model(name, version)
            return 200, self.infer(body)
        except Refused as exc:
            return exc.status, _ENCODER.encode(InferError(error=exc.message))


_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_JSON_HEADER = (b"content-type", b"application/json")
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest inference request accepted, as Litestar bounds the other endpoints' bodies."""


class ModelApp:
    """ASGI app of the model server.

    Inference takes a lean path straight on ASGI, because framework routing and
    signature handling would cost several times the scoring itself; every other endpoint
    is served by the Litestar app in ``control``.
    """

    def __init__(self, service: ModelService, control: Litestar) -> None:
        """Combine the service with the Litestar app for the other endpoints.

        Args:
            service: The served model.
            control: Litestar app serving health, metadata, faults and stats.
        """
        self.service = service
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope.

        Args:
            scope: The ASGI scope.
            receive: The ASGI receive callable.
            send: The ASGI send callable.
        """
        if scope["type"] == ScopeType.HTTP and scope["method"] == "POST":
            match = _INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await self._infer(match[1], match[2], receive, send)
                return
        await self.control(scope, receive, send)

    async def _infer(self, name: str, version: str | None, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client left before sending its whole body: nobody to answer.
                return
            chunks.append(message["body"])
            size += len(message["body"])
            if size > MAX_BODY_BYTES:
                await self._answer(
                    send, 413, _ENCODER.encode(InferError(error="request too large"))
                )
                return
            if not message.get("more_body", False):
                break
        status, body = await self.service.handle_infer(name, version, b"".join(chunks), receive)
        await self._answer(send, status, body)

    @staticmethod
    async def _answer(send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_JSON_HEADER, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _model_response(service: ModelService, name: str, version: str | None) -> Response[Any]:
    try:
        service.check_model(name, version)
    except Refused as exc:
        return error_response(exc.status, exc.message)
    return Response(MODEL_METADATA)


def _model_ready_response(service: ModelService, name: str, version: str | None) -> Response[Any]:
    try:
        service.check_model(name, version)
    except Refused as exc:
        return error_response(exc.status, exc.message)
    ready = service.ready
    return Response(ModelReady(name=name, ready=ready), status_code=200 if ready else 503)


def _control_app(service: ModelService) -> Litestar:
    """Build the Litestar app for every endpoint except inference."""

    @get("/v2/health/live")
    async def live() -> ServerLive:
        return ServerLive(live=True)

    @get("/v2/health/ready")
    async def ready() -> Response[ServerReady]:
        is_ready = service.ready
        return Response(ServerReady(ready=is_ready), status_code=200 if is_ready else 503)

    @get("/v2")
    async def server_metadata() -> ServerMetadata:
        return ServerMetadata(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    @get(["/v2/models/{name:str}", "/v2/models/{name:str}/versions/{version:str}"])
    async def model_metadata(
        name: FromPath[str], version: FromPath[str | None] = None
    ) -> Response[Any]:
        return _model_response(service, name, version)

    @get(["/v2/models/{name:str}/ready", "/v2/models/{name:str}/versions/{version:str}/ready"])
    async def model_ready(
        name: FromPath[str], version: FromPath[str | None] = None
    ) -> Response[Any]:
        return _model_ready_response(service, name, version)

    @put("/_faults", status_code=200)
    async def set_fault(request: Request[Any, Any, Any]) -> Response[Any]:
        try:
            spec = msgspec.json.decode(await request.body(), type=FaultSpec)
        except msgspec.DecodeError as exc:
            return error_response(400, f"bad fault: {exc}")
        service.fault.set(spec)
        return Response(spec)

    @delete("/_faults")
    async def reset_fault() -> None:
        service.fault.set(NO_FAULT)

    @get("/_stats")
    async def read_stats() -> ModelStats:
        return ModelStats(infer_calls=service.infer_calls, rows=service.rows)

    @delete("/_stats")
    async def reset_stats() -> None:
        service.infer_calls = 0
        service.rows = 0

    return Litestar(
        route_handlers=[
            live,
            ready,
            server_metadata,
            model_metadata,
            model_ready,
            set_fault,
            reset_fault,
            read_stats,
            reset_stats,
        ],
        exception_handlers={HTTPException: http_exception_as_error},
        openapi_config=None,
    )


def create_model_app(model: FraudModel | None = None) -> ModelApp:
    """Build the ASGI app serving the ``fraud`` model over OIP v2.

    Args:
        model: Model to serve; fitted on the synthetic data set when omitted.

    Returns:
        The ASGI app; its ``service`` attribute holds the model, fault and counters.
    """
    service = ModelService(model or FraudModel.fit_synthetic())
    return ModelApp(service, _control_app(service))


def main(argv: list[str] | None = None) -> None:
    """Serve the sample model until interrupted.

    Args:
        argv: Command-line arguments without the program name; defaults to ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m scoregate_dev.sample_model",
        description="Open Inference Protocol v2 server for the sample fraud model.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, required=True, help="port to bind")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_model_app(),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        # Hung calls hold their connections open; without a bound, stopping would wait on them.
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
