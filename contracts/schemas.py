"""JSON Schemas of the public contracts, their released baselines, and the release step.

``python -m contracts.schemas`` writes one schema file per public type into
``contracts/schemas/``: the contract as the code defines it now, for people and
tools to read. ``contracts/released/<major>/`` holds the schemas of each released
major version of the contract; the current schemas are judged against the
baseline of :data:`contracts.version.CONTRACT_VERSION` by the rule in
:mod:`contracts.compatibility`, which needs to know which way each type travels.

``python -m contracts.schemas --release`` cuts the baseline of the current major
version: it refreshes an existing one only with compatible changes (new optional
fields, say), and starts a new folder after ``CONTRACT_VERSION`` has been raised.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from contracts.audit import AccessLog, DecisionPage, ReplayRequest, ReplayResult, VerifyReport
from contracts.compatibility import Direction, JSONObject, breaking_changes
from contracts.deadletters import DeadLetter, DeadLetterPage
from contracts.decisions import DecisionRecord, RollbackRequest, RollbackState
from contracts.events import FreshnessAlertEvent, OutcomeEvent
from contracts.features import PushRequest, PushResponse
from contracts.freshness import FreshnessReport
from contracts.freshness_alerts import FreshnessAlerts
from contracts.ingest import FeatureUpdate, FeatureUpdateEvent
from contracts.reconciliation import ReconciliationReport
from contracts.registry import RegistryFile
from contracts.scoring import ErrorBody, ScoreRequest, ScoreResponse
from contracts.version import CONTRACT_VERSION

SCHEMA_DIR = Path(__file__).parent / "schemas"
RELEASED_DIR = Path(__file__).parent / "released"
_SUFFIX = ".schema.json"


class PublicType(NamedTuple):
    """A type of the public contract and which way it travels."""

    type: Any
    direction: Direction


_SENT, _RECEIVED = Direction.SENT, Direction.RECEIVED

PUBLIC_TYPES: dict[str, PublicType] = {
    "score-request": PublicType(ScoreRequest, _SENT),
    "score-response": PublicType(ScoreResponse, _RECEIVED),
    "push-request": PublicType(PushRequest, _SENT),
    "push-response": PublicType(PushResponse, _RECEIVED),
    # Upstreams produce them: the data of a feature-update CloudEvent in Kafka, and a
    # whole event in structured mode as a line of a backfill file.
    "feature-update": PublicType(FeatureUpdate, _SENT),
    "feature-update-event": PublicType(FeatureUpdateEvent, _SENT),
    "decision-record": PublicType(DecisionRecord, _RECEIVED),
    "rollback-request": PublicType(RollbackRequest, _SENT),
    "rollback-state": PublicType(RollbackState, _RECEIVED),
    "outcome-event": PublicType(OutcomeEvent, _RECEIVED),
    "dead-letter": PublicType(DeadLetter, _RECEIVED),
    "dead-letter-page": PublicType(DeadLetterPage, _RECEIVED),
    # Operators write the file; GET /registry shows it back, but what must not break
    # is a file that loaded before.
    "registry-file": PublicType(RegistryFile, _SENT),
    "error": PublicType(ErrorBody, _RECEIVED),
    "access-log": PublicType(AccessLog, _RECEIVED),
    "decision-page": PublicType(DecisionPage, _RECEIVED),
    "replay-request": PublicType(ReplayRequest, _SENT),
    "replay-result": PublicType(ReplayResult, _RECEIVED),
    "verify-report": PublicType(VerifyReport, _RECEIVED),
    "freshness-report": PublicType(FreshnessReport, _RECEIVED),
    "freshness-alerts": PublicType(FreshnessAlerts, _RECEIVED),
    "freshness-alert-event": PublicType(FreshnessAlertEvent, _RECEIVED),
    "reconciliation-report": PublicType(ReconciliationReport, _RECEIVED),
}

# Keywords whose values are schemas, or maps or lists of them; all others hold data.
_SCHEMA_MAPS = frozenset({"properties", "$defs", "patternProperties", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_VALUES = frozenset(
    {"items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames"}
)


class ReleaseError(Exception):
    """A baseline cannot be cut: the change breaks the contract, or the version is wrong."""


def current_schemas() -> dict[str, JSONObject]:
    """The schema of every public type as the code defines it now."""
    return {name: msgspec.json.schema(public.type) for name, public in PUBLIC_TYPES.items()}


def read_schemas(directory: Path) -> dict[str, JSONObject]:
    """The schemas in one folder, by public type name."""
    return {
        path.name.removesuffix(_SUFFIX): msgspec.json.decode(path.read_bytes())
        for path in sorted(directory.glob(f"*{_SUFFIX}"))
    }


def committed_schemas(directory: Path = SCHEMA_DIR) -> dict[str, JSONObject]:
    """The schemas as last exported into the repository."""
    return read_schemas(directory)


def released_schemas(
    version: int = CONTRACT_VERSION, released_dir: Path = RELEASED_DIR
) -> dict[str, JSONObject]:
    """The baseline of one major version of the contract; empty if it was never released."""
    return read_schemas(released_dir / str(version))


def write_schemas(
    directory: Path = SCHEMA_DIR, schemas: dict[str, JSONObject] | None = None
) -> list[Path]:
    """Write schemas, pretty-printed, one file per type; files of other types go.

    Args:
        directory: The folder to fill.
        schemas: What to write; the current schemas when not given.

    Returns:
        The files written.
    """
    schemas = current_schemas() if schemas is None else schemas
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob(f"*{_SUFFIX}"):
        if path.name.removesuffix(_SUFFIX) not in schemas:
            path.unlink()
    written = []
    for name, schema in schemas.items():
        path = directory / f"{name}{_SUFFIX}"
        path.write_bytes(msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n")
        written.append(path)
    return written


def normalised(schema: Any) -> Any:
    """A schema with the whitespace in its descriptions collapsed.

    msgspec releases render docstrings with different indentation; the text, not
    its layout, is what the exported files must keep current.
    """
    if not isinstance(schema, dict):
        return schema
    out: JSONObject = {}
    for key, value in schema.items():
        if key == "description" and isinstance(value, str):
            out[key] = " ".join(value.split())
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: normalised(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [normalised(sub) for sub in value]
        elif key in _SCHEMA_VALUES:
            out[key] = normalised(value)
        else:
            out[key] = value
    return out


def stale_schemas(committed: dict[str, JSONObject], current: dict[str, JSONObject]) -> list[str]:
    """Names of the exported schemas that differ from, lack or outlive the current ones."""
    names = sorted(committed.keys() | current.keys())
    return [
        name
        for name in names
        if name not in committed
        or name not in current
        or normalised(committed[name]) != normalised(current[name])
    ]


def contract_breaks(
    baseline: dict[str, JSONObject], current: dict[str, JSONObject]
) -> dict[str, list[str]]:
    """Each public type of ``baseline`` that ``current`` breaks, with its breaks.

    Types that are new since the baseline are not part of it and cannot break it.
    """
    breaks: dict[str, list[str]] = {}
    for name, old in baseline.items():
        public = PUBLIC_TYPES.get(name)
        if public is None or name not in current:
            breaks[name] = ["public type removed or renamed"]
            continue
        problems = breaking_changes(old, current[name], public.direction)
        if problems:
            breaks[name] = problems
    return breaks


def describe_breaks(breaks: dict[str, list[str]], version: int = CONTRACT_VERSION) -> str:
    """A report of breaks against contract ``version``, saying what to do about them."""
    lines = [f"These changes break contract version {version}:"]
    for name, problems in breaks.items():
        public = PUBLIC_TYPES.get(name)
        way = f" ({public.direction.value})" if public else ""
        lines.extend(f"  {name}{way}: {problem}" for problem in problems)
    lines.append(
        f"A breaking change needs a new major contract version: set CONTRACT_VERSION = "
        f"{version + 1} in contracts/version.py and run `python -m contracts.schemas "
        f"--release` to cut its baseline in contracts/released/{version + 1}/ "
        "(or make the change compatible: new fields optional, old ones kept)."
    )
    return "\n".join(lines)


def release(
    version: int = CONTRACT_VERSION,
    released_dir: Path = RELEASED_DIR,
    schemas: dict[str, JSONObject] | None = None,
) -> Path:
    """Cut the baseline of contract ``version`` from the current schemas.

    An existing baseline of that version is refreshed only if nothing in it breaks;
    a new one must be the next major version after the last released.

    Args:
        version: The major version to release.
        released_dir: The folder of all baselines.
        schemas: The schemas to release; the current ones when not given.

    Returns:
        The baseline folder written.

    Raises:
        ReleaseError: The schemas break the existing baseline, or ``version`` is not
            the next one.
    """
    schemas = current_schemas() if schemas is None else schemas
    target = released_dir / str(version)
    if target.is_dir():
        breaks = contract_breaks(read_schemas(target), schemas)
        if breaks:
            raise ReleaseError(describe_breaks(breaks, version))
    else:
        majors = [int(p.name) for p in released_dir.glob("*") if p.is_dir() and p.name.isdigit()]
        expected = max(majors, default=0) + 1
        if version != expected:
            raise ReleaseError(f"contract version {version} cannot be released: next is {expected}")
    write_schemas(target, schemas)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Write the schema files (and, with ``--release``, the baseline) and list them.

    Args:
        argv: The command-line arguments; ``sys.argv[1:]`` when not given.

    Returns:
        The exit status: 1 if the baseline cannot be cut, else 0.
    """
    parser = argparse.ArgumentParser(prog="python -m contracts.schemas", description=__doc__)
    parser.add_argument(
        "--release",
        action="store_true",
        help=f"also cut the baseline of contract version {CONTRACT_VERSION}",
    )
    args = parser.parse_args(argv)
    schemas = current_schemas()
    if args.release:
        try:
            target = release(schemas=schemas)
        except ReleaseError as exc:
            sys.stderr.write(f"{exc}\n")
            return 1
        sys.stdout.write(f"released contract version {CONTRACT_VERSION} in {target}\n")
    for path in write_schemas(schemas=schemas):
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
