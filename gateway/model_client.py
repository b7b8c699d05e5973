"""The model client: Open Inference Protocol v2 over REST.

Works with any spec-faithful server (KServe, MLServer, Triton): the feature vector
goes out as one ``[1, n]`` tensor or as one named input per feature, as the
registry says; outputs come back flat or nested and are read row-major.

With ``max_batch_size`` above 1, rows that wait while the model's calls are in flight
go out as one call of ``[rows, n]`` (or ``[rows]`` per input), and each row takes its
outputs back by position (:mod:`gateway.batching`). Retries and the breaker wrap each
call, so a batch counts once in the breaker however many rows it carries; a failed
call fails its rows only, each with the answer a row of its own would have had.
Versioned calls (replays) always go alone.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
from opentelemetry.trace import SpanKind
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from contracts.features import FeatureScalar
from contracts.inference import Datatype, InferError, InferInput, InferRequest, InferResponse
from contracts.registry import DType, Model
from gateway.batching import BatchCancelled, Batcher, BatchShapeError, split_outputs
from gateway.breaker import BreakerOpen, DependencyBreaker
from gateway.deadline import Deadline, DeadlineReached
from gateway.errors import DeadlineExceeded, GatewayError, Unavailable
from gateway.observability import inject, stage
from gateway.retries import call_with_retries

_encode_request = msgspec.json.Encoder().encode
_decode_response = msgspec.json.Decoder(InferResponse).decode
_decode_error = msgspec.json.Decoder(InferError).decode

_DATATYPES: dict[DType, Datatype] = {
    "int64": "INT64",
    "float64": "FP64",
    "bool": "BOOL",
    "string": "BYTES",
}


class ModelRejected(GatewayError):
    """The model server refused the request (4xx): the registry and the model disagree."""

    status_code = 502


class _Transient(Exception):
    """A connection error or 5xx: worth another attempt within the deadline."""


_RETRY_TRANSIENT = retry_if_exception_type(_Transient)

# Slots of a model client whose session sets no connection limit.
_UNLIMITED = 1 << 30

Row = list[FeatureScalar]
"""One row's values in vector order (floats already, for the tensor layout)."""


class ModelClient:
    """Calls one model's inference endpoint behind its own breaker."""

    def __init__(
        self,
        model: Model,
        vector: Sequence[tuple[str, DType]],
        session: aiohttp.ClientSession,
    ) -> None:
        self.model = model
        self._columns = [(name, _DATATYPES[dtype]) for name, dtype in vector]
        self._session = session
        self._url = f"{model.endpoint.rstrip('/')}/v2/models/{model.name}/infer"
        self._ready_url = f"{model.endpoint.rstrip('/')}/v2/health/ready"
        self._timeout_s = model.timeout_ms / 1000
        self.breaker = DependencyBreaker(f"model:{model.name}", model.breaker)
        # As many calls at once as the session has connections for the model's host,
        # so that a call waits for one under the request's deadline, not inside the
        # model's own timeout, where the wait would be blamed on the model.
        connector = session.connector
        limit = (connector.limit_per_host or connector.limit) if connector is not None else 0
        self._connections = asyncio.Semaphore(limit or _UNLIMITED)
        self._stop = stop_after_attempt(model.retry.attempts)
        self._wait = wait_exponential_jitter(
            multiplier=model.retry.backoff_ms / 1000, max=model.retry.max_backoff_ms / 1000
        )
        self.batcher: Batcher[tuple[str, Row], dict[str, Any]] | None = None
        """The queue of rows waiting for a call, when the model batches them."""
        if model.max_batch_size > 1:
            self.batcher = Batcher(
                self._infer_batch,
                max_size=model.max_batch_size,
                max_wait_s=model.max_batch_wait_ms / 1000,
                max_in_flight=model.max_batches_in_flight,
            )

    def request(self, decision_id: str, vector: Sequence[FeatureScalar]) -> InferRequest:
        """The inference request for one row."""
        return self.batch_request(decision_id, [self._row(vector)])

    def batch_request(
        self, request_id: str, rows: Sequence[Sequence[FeatureScalar]]
    ) -> InferRequest:
        """The inference request for rows in order: the batch dimension is their count.

        The tensor layout sends one ``[rows, n]`` tensor, row-major; the columns layout
        one input of shape ``[rows]`` per feature.
        """
        layout = self.model.input
        if layout.layout == "tensor":
            data = list(itertools.chain.from_iterable(rows))
            width = len(rows[0]) if rows else 0
            if len(data) != len(rows) * width:
                raise ValueError("rows of a batch must be equally long")
            inputs = [
                InferInput(
                    name=layout.name, shape=[len(rows), width], datatype=layout.datatype, data=data
                )
            ]
        else:
            values = zip(*rows, strict=True)
            inputs = [
                InferInput(name=name, shape=[len(rows)], datatype=datatype, data=list(column))
                for (name, datatype), column in zip(self._columns, values, strict=True)
            ]
        return InferRequest(id=request_id, inputs=inputs)

    def _row(self, vector: Sequence[FeatureScalar]) -> Row:
        if self.model.input.layout == "tensor":
            return [float(v) for v in vector]
        return list(vector)

    async def infer(
        self,
        decision_id: str,
        vector: Sequence[FeatureScalar],
        deadline: Deadline,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Score one row; returns outputs by name (a scalar for a one-element output).

        ``version`` asks for a version other than the one the server picks by default.
        Without one, and when the model batches, the row joins the next call of its
        model and keeps its own deadline in it.
        """
        try:
            if self.batcher is None or version is not None:
                return await self._infer_alone(decision_id, vector, deadline, version)
            if len(vector) != len(self._columns):
                raise ValueError(
                    f"a row of {len(vector)} values for a vector of {len(self._columns)}"
                )
            return await self.batcher.submit((decision_id, self._row(vector)), deadline)
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"model {self.model.name} did not answer within the request deadline",
                field="model",
            ) from exc
        except BreakerOpen as exc:
            raise Unavailable(
                f"model {self.model.name} is unavailable (circuit open)",
                field="model",
                headers={"Retry-After": str(max(1, round(exc.retry_after_s)))},
            ) from exc
        except (_Transient, BatchCancelled) as exc:
            raise Unavailable(
                f"model {self.model.name} is unavailable: {exc}", field="model"
            ) from exc
        except ModelRejected as exc:
            if self.batcher is None or version is not None:
                raise
            # One call's rejection is each of its rows' own answer.
            raise ModelRejected(exc.detail, field=exc.field) from exc

    async def _infer_alone(
        self,
        decision_id: str,
        vector: Sequence[FeatureScalar],
        deadline: Deadline,
        version: str | None,
    ) -> dict[str, Any]:
        body = _encode_request(self.request(decision_id, vector))
        url = self._url if version is None else self._versioned_url(version)
        async with asyncio.timeout(deadline.remaining()):
            response = await self._post_with_retries(url, body, deadline)
        return self._outputs(response)

    async def _infer_batch(
        self, rows: list[tuple[str, Row]], deadline: Deadline
    ) -> list[dict[str, Any]]:
        """One call for the rows of a batch; the batcher ends it at ``deadline``."""
        # The call is named after its first row's decision, as a call of one row is.
        body = _encode_request(self.batch_request(rows[0][0], [row for _, row in rows]))
        response = await self._post_with_retries(self._url, body, deadline, len(rows))
        try:
            return split_outputs(response.outputs, len(rows))
        except BatchShapeError as exc:
            raise ModelRejected(
                f"model {self.model.name} answered outside the protocol: {exc}", field="model"
            ) from exc

    async def _post_with_retries(
        self, url: str, body: bytes, deadline: Deadline, rows: int = 1
    ) -> InferResponse:
        return await call_with_retries(
            lambda: self._post(url, body, deadline, rows),
            lambda: AsyncRetrying(
                stop=self._stop, wait=self._wait, retry=_RETRY_TRANSIENT, reraise=True
            ),
            _Transient,
        )

    def _versioned_url(self, version: str) -> str:
        base = self.model.endpoint.rstrip("/")
        return f"{base}/v2/models/{self.model.name}/versions/{quote(version, safe='')}/infer"

    async def _post(self, url: str, body: bytes, deadline: Deadline, rows: int) -> InferResponse:
        attributes = {"url.full": url, "scoregate.model.rows": str(rows)}
        with stage(f"model {self.model.name} infer", SpanKind.CLIENT, attributes):
            return await self._post_once(url, body, deadline)

    async def _post_once(self, url: str, body: bytes, deadline: Deadline) -> InferResponse:
        headers = inject({"content-type": "application/json"})
        async with self.breaker.guard(), deadline.holding(self._connections):
            try:
                async with (
                    deadline.limit(self._timeout_s),
                    self._session.post(url, data=body, headers=headers) as response,
                ):
                    raw = await response.read()
                    status = response.status
            except DeadlineReached:
                raise  # the request's budget ran out, not the model's timeout: a 504
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _Transient(str(exc) or type(exc).__name__) from exc
            if status >= 500:
                raise _Transient(f"answered {status}")
        if status >= 400:
            raise ModelRejected(
                f"model {self.model.name} rejected the request ({status}): {_error_text(raw)}",
                field="model",
            )
        try:
            return _decode_response(raw)
        except msgspec.DecodeError as exc:
            raise ModelRejected(
                f"model {self.model.name} answered outside the protocol: {exc}", field="model"
            ) from exc

    @staticmethod
    def _outputs(response: InferResponse) -> dict[str, Any]:
        return split_outputs(response.outputs, 1)[0]

    async def ready(self, timeout_s: float) -> bool:
        """True when the model server says it is ready."""
        try:
            async with asyncio.timeout(timeout_s), self._session.get(self._ready_url) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


def _error_text(raw: bytes) -> str:
    try:
        return _decode_error(raw).error
    except msgspec.DecodeError:
        return raw[:200].decode("utf-8", "replace")
