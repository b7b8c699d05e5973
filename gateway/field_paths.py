"""The field a validation error blames, found in the body against its declared type.

msgspec's :class:`~msgspec.ValidationError` carries only a message, and Litestar
passes on the path it cuts from it, in which the key of a bad dict value is not named
(``$.context[...]``). The body that failed is at hand, and so is its type: walking
them together finds the first place the body does not fit, as msgspec decodes it
(object keys in the order sent, then required fields that are missing), and names
it in full, dotted: ``context.amount``, ``lineage.surprise``, ``items.2.name``.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec

_SEQUENCES = (list, tuple, set, frozenset)


def misfit(value: Any, annotation: Any) -> list[str]:
    """The path to the innermost part of ``value`` that ``annotation`` does not admit.

    Empty when the value fits, or when the misfit is the value as a whole (a wrong
    type at the top, or a constraint on the whole of a container).
    """
    if _fits(value, annotation):
        return []
    arm = _structured_arm(value, annotation)
    if arm is None:
        return []
    if isinstance(arm, type) and issubclass(arm, msgspec.Struct):
        return _struct_misfit(value, arm)
    origin, args = get_origin(arm), get_args(arm)
    if origin is dict and len(args) == 2:
        for key, item in value.items():
            if not _fits(key, args[0]):
                return [str(key)]
            if not _fits(item, args[1]):
                return [str(key), *misfit(item, args[1])]
        return []
    item_type = args[0] if args else Any
    for position, item in enumerate(value):
        if not _fits(item, item_type):
            return [str(position), *misfit(item, item_type)]
    return []


def _struct_misfit(value: dict[str, Any], struct: type[msgspec.Struct]) -> list[str]:
    fields = {field.encode_name: field for field in msgspec.structs.fields(struct)}
    forbid_unknown = struct.__struct_config__.forbid_unknown_fields
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            if forbid_unknown:
                return [key]
            continue
        if not _fits(item, field.type):
            return [key, *misfit(item, field.type)]
    for name, field in fields.items():
        if field.required and name not in value:
            return [name]
    return []


def _fits(value: Any, annotation: Any) -> bool:
    try:
        msgspec.convert(value, annotation)
    except (msgspec.ValidationError, TypeError):
        return False
    return True


def _structured_arm(value: Any, annotation: Any) -> Any:
    """The one member of ``annotation`` that could hold ``value`` as an object or array."""
    if isinstance(value, dict):
        arms = [arm for arm in _arms(annotation) if _is_mapping(arm)]
    elif isinstance(value, list):
        arms = [arm for arm in _arms(annotation) if get_origin(arm) in _SEQUENCES]
    else:
        return None
    return arms[0] if len(arms) == 1 else None


def _is_mapping(arm: Any) -> bool:
    if isinstance(arm, type) and issubclass(arm, msgspec.Struct):
        return not arm.__struct_config__.array_like
    return get_origin(arm) is dict


def _arms(annotation: Any) -> list[Any]:
    """The members of a union (or the type itself), ``Annotated`` unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _arms(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [arm for member in get_args(annotation) for arm in _arms(member)]
    return [annotation]
