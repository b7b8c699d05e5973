"""Open Inference Protocol v2 (REST) messages, as KServe, MLServer and Triton speak them."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class InferInput(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One input tensor; ``data`` is row-major, flat or nested."""

    name: str
    shape: list[int]
    datatype: Datatype
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestedOutput(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An output the caller wants back."""

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``POST v2/models/{name}[/versions/{version}]/infer`` body."""

    inputs: list[InferInput]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestedOutput] | None = None


class InferOutput(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One output tensor of a response."""

    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferResponse(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The inference response; servers add fields of their own, which are ignored."""

    model_name: str
    outputs: list[InferOutput]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None


class InferError(msgspec.Struct, frozen=True, kw_only=True):
    """An error answer: ``{"error": "..."}``."""

    error: str
