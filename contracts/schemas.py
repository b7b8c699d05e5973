"""JSON Schemas of the public contracts, and the check that keeps them compatible.

``python -m contracts.schemas`` writes one schema file per public type into
``contracts/schemas/``. Those files are committed: they are what existing clients
were built against, and :func:`breaking_changes` says how a new version of a
contract would break them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec

from contracts.audit import AccessLog, DecisionPage, ReplayRequest, ReplayResult, VerifyReport
from contracts.deadletters import DeadLetter, DeadLetterPage
from contracts.decisions import DecisionRecord, RollbackRequest, RollbackState
from contracts.events import OutcomeEvent
from contracts.features import PushRequest, PushResponse
from contracts.registry import RegistryFile
from contracts.scoring import ErrorBody, ScoreRequest, ScoreResponse

SCHEMA_DIR = Path(__file__).parent / "schemas"

PUBLIC_TYPES: dict[str, Any] = {
    "score-request": ScoreRequest,
    "score-response": ScoreResponse,
    "push-request": PushRequest,
    "push-response": PushResponse,
    "decision-record": DecisionRecord,
    "rollback-request": RollbackRequest,
    "rollback-state": RollbackState,
    "outcome-event": OutcomeEvent,
    "dead-letter": DeadLetter,
    "dead-letter-page": DeadLetterPage,
    "registry-file": RegistryFile,
    "error": ErrorBody,
    "access-log": AccessLog,
    "decision-page": DecisionPage,
    "replay-request": ReplayRequest,
    "replay-result": ReplayResult,
    "verify-report": VerifyReport,
}

# Keys that document a schema without changing what validates against it.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples"})

JSONObject = dict[str, Any]


def current_schemas() -> dict[str, JSONObject]:
    """The schema of every public type as the code defines it now."""
    return {name: msgspec.json.schema(tp) for name, tp in PUBLIC_TYPES.items()}


def committed_schemas(directory: Path = SCHEMA_DIR) -> dict[str, JSONObject]:
    """The schemas as last exported into the repository."""
    return {
        path.name.removesuffix(".schema.json"): msgspec.json.decode(path.read_bytes())
        for path in sorted(directory.glob("*.schema.json"))
    }


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Export every public schema, pretty-printed, one file per type."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in current_schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_bytes(msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n")
        written.append(path)
    return written


def _shape(schema: Any) -> Any:
    """A schema with its annotations dropped, so only what it accepts is compared."""
    if isinstance(schema, dict):
        return {k: _shape(v) for k, v in schema.items() if k not in _ANNOTATIONS}
    if isinstance(schema, list):
        return [_shape(v) for v in schema]
    return schema


def _definitions(schema: JSONObject) -> dict[str, JSONObject]:
    defs: dict[str, JSONObject] = dict(schema.get("$defs", {}))
    if "properties" in schema:
        defs["<root>"] = schema
    return defs


def breaking_changes(old: JSONObject, new: JSONObject) -> list[str]:
    """What in ``new`` would break a client built against ``old``.

    A removed (or renamed) object type or field, a field whose accepted shape
    changed, and a field that became required all count; new optional fields and
    changed descriptions do not.
    """
    problems = []
    new_defs = _definitions(new)
    for type_name, old_def in _definitions(old).items():
        new_def = new_defs.get(type_name)
        if new_def is None:
            problems.append(f"{type_name}: type removed or renamed")
            continue
        new_props = new_def.get("properties", {})
        for field, old_field in old_def.get("properties", {}).items():
            if field not in new_props:
                problems.append(f"{type_name}.{field}: field removed or renamed")
            elif _shape(old_field) != _shape(new_props[field]):
                problems.append(f"{type_name}.{field}: type changed")
        newly_required = set(new_def.get("required", [])) - set(old_def.get("required", []))
        problems.extend(
            f"{type_name}.{field}: new required field" for field in sorted(newly_required)
        )
    return problems


def main() -> None:
    """Write the schema files and list them."""
    for path in write_schemas():
        sys.stdout.write(f"{path}\n")


if __name__ == "__main__":
    main()
