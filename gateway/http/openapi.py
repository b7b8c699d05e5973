"""What the served OpenAPI schema says beyond the handlers' own types.

Every error answer is an :class:`~contracts.scoring.ErrorBody`; each route declares the
statuses it can answer with that body, so that a client (or schemathesis) can hold
the gateway to them. Unions of JSON scalars (a feature value: ``bool | int | float |
str``) are declared as a list of types: Litestar writes ``oneOf``, which no integer
satisfies, since an integer is also a number. The arms of ``/score``'s
``max_staleness_ms`` (a number, or an object of numbers) get back the constraints
Litestar drops from a union's arms.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import msgspec
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPI, Schema
from litestar.openapi.spec.enums import OpenAPIType

from contracts.features import Identifier
from contracts.scoring import MAX_BOUNDED_FEATURES, ErrorBody

_MEANINGS = {
    400: "The request is malformed: a parameter or field is missing, unknown, of the wrong"
    " type or out of range (``field`` names it)",
    401: "No valid API key (``Authorization: Bearer <key>``)",
    403: "The key does not hold the role this route needs",
    404: "No such decision or event",
    409: "The request conflicts with the resource's state (on /score: its request_id was"
    " used for a different request; ``field`` names the first difference)",
    422: "The decision's gathered context holds a value the audit store cannot keep"
    " (``extra.record_field`` says where)",
    502: "The model server refused the request",
    503: "A dependency the answer needs is down (PostgreSQL, the model server, a feature"
    " whose policy is to fail) or the gateway is overloaded; retry after ``Retry-After``",
    504: "The request's deadline passed",
}


def error_responses(*statuses: int, public: bool = False) -> dict[int, ResponseSpec]:
    """The error answers of a route: 400, 401 and 403 (unless ``public``), and ``statuses``.

    Args:
        *statuses: The statuses the route answers besides the common ones.
        public: The route needs no key (no 401 or 403).

    Returns:
        The ``responses`` argument of a route handler.
    """
    common = (400,) if public else (400, 401, 403)
    return {
        status: ResponseSpec(
            data_container=ErrorBody, description=_MEANINGS[status], generate_examples=False
        )
        for status in sorted({*common, *statuses})
    }


_SCALAR_TYPES = frozenset(
    {
        OpenAPIType.BOOLEAN,
        OpenAPIType.INTEGER,
        OpenAPIType.NUMBER,
        OpenAPIType.STRING,
        OpenAPIType.NULL,
    }
)


def scalar_unions_as_type_lists(openapi: OpenAPI) -> None:
    """Rewrite every ``oneOf`` of bare JSON scalar types as one schema with a type list."""
    seen: set[int] = set()
    pending: list[Any] = [openapi]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Schema) and _scalar_union(node.one_of):
            node.type = [
                arm.type
                for arm in node.one_of or ()
                if isinstance(arm, Schema) and isinstance(arm.type, OpenAPIType)
            ]
            node.one_of = None
        if dataclasses.is_dataclass(node):
            pending.extend(getattr(node, field.name) for field in dataclasses.fields(node))
        elif isinstance(node, dict):
            pending.extend(node.values())
        elif isinstance(node, list | tuple):
            pending.extend(node)


def _scalar_union(arms: Any) -> bool:
    """Arms that are each one bare scalar type, an integer and a number among them."""
    if not arms or not all(isinstance(arm, Schema) for arm in arms):
        return False
    kinds = [arm.type for arm in arms]
    bare = all(arm == Schema(type=arm.type) for arm in arms)
    return (
        bare
        and set(kinds) <= _SCALAR_TYPES
        and {OpenAPIType.INTEGER, OpenAPIType.NUMBER} <= set(kinds)
    )


# A feature name in the object: as long as an identifier may be.
_NAME = cast("msgspec.inspect.StrType", msgspec.inspect.type_info(Identifier))


def staleness_bounds_constrained(openapi: OpenAPI) -> None:
    """Declare the constraints of ``ScoreRequest.max_staleness_ms``'s arms.

    Litestar takes a field's constraints from its annotation as a whole, so the arms
    of a union keep none of theirs: without this the schema would admit a negative
    bound, an object of any size and an empty feature name, which the gateway refuses.
    """
    components = openapi.components.schemas if openapi.components else None
    request = components.get("ScoreRequest") if components else None
    properties = request.properties if isinstance(request, Schema) else None
    field = properties.get("max_staleness_ms") if properties else None
    if not isinstance(field, Schema):
        return
    for arm in field.one_of or ():
        if not isinstance(arm, Schema):
            continue
        if arm.type == OpenAPIType.INTEGER:
            arm.minimum = 0
        elif arm.type == OpenAPIType.OBJECT:
            arm.max_properties = MAX_BOUNDED_FEATURES
            arm.property_names = Schema(
                type=OpenAPIType.STRING, min_length=_NAME.min_length, max_length=_NAME.max_length
            )
            if isinstance(arm.additional_properties, Schema):
                arm.additional_properties.minimum = 0
