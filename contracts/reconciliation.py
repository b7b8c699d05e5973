"""Reconciliation of the online store against the sources: runs, findings, the report.

A run takes a sample of one feature's entities from the online store, asks the
feature's source for each entity's current record, and compares. ``GET
/reconciliation`` answers with the latest run of each feature.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from contracts.features import FeatureScalar

FindingKind = Literal[
    "match", "newer_at_source", "mismatch", "missing_in_store", "missing_at_source"
]
"""What one entity's check found.

- ``match``: the stored value agrees with the source's, and the source's record is
  not newer than the stored one;
- ``newer_at_source``: the values agree, but the source's record is newer (the store
  holds an older record with the same value);
- ``mismatch``: the values disagree (beyond the feature's tolerance); the event times
  tell which side is newer;
- ``missing_in_store``: the source has a record, the store no value for the feature;
- ``missing_at_source``: the store has a value, the source answered that it has no
  such record.
"""

RepairOutcome = Literal["written", "older", "duplicate"]
"""What the online store's compare-and-set did with a repair: wrote it, kept a newer
stored value (``older``: the source's record is older than what the store holds by
then), or already held that very record."""

StopReason = Literal["breaker_open", "store_unavailable", "shutdown"]
"""Why a run ended before it checked its whole sample.

- ``breaker_open``: the source's breaker is open (or probing): reconciliation leaves
  a source alone while it recovers;
- ``store_unavailable``: the online store could not be read or written;
- ``shutdown``: the process stopped during the run.
"""


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One entity's check in a run.

    Attributes:
        entity: The feature's entity (``customer``).
        entity_id: The entity's id.
        kind: What the check found.
        stored_value: The value the online store held when it was checked.
        source_value: The value the source answered with.
        stored_event_time: The stored value's event time.
        source_event_time: The source record's event time.
        stored_lineage_id: The stored value's lineage id: a decision that served the
            value has the same one.
        source_ref: The source record's id (or its URL).
        repaired: The source's value was written into the online store.
        repair_outcome: What the compare-and-set did, when the run repaired.
        found_at: When the entity was checked.
    """

    entity: str
    entity_id: str
    kind: FindingKind
    stored_value: FeatureScalar | None = None
    source_value: FeatureScalar | None = None
    stored_event_time: datetime | None = None
    source_event_time: datetime | None = None
    stored_lineage_id: str | None = None
    source_ref: str | None = None
    repaired: bool = False
    repair_outcome: RepairOutcome | None = None
    found_at: datetime


class ReconciliationRun(msgspec.Struct, frozen=True, kw_only=True):
    """One reconciliation run of one feature and what it found.

    Attributes:
        run_id: The run's UUID.
        feature: The feature reconciled.
        source: The feature's source.
        repair: Whether the run wrote the source's values into the online store.
        sampled: Entities in the sample.
        checked: Entities compared with the source (its answer, or its 404).
        matched: Checked entities whose stored value agrees with the source's.
        mismatched: Checked entities whose values disagree.
        newer_at_source: Checked entities whose source record is newer than the stored
            one, whether the values agree or not (counted beside the others).
        missing_in_store: Entities the source has a record of and the store no value.
        missing_at_source: Entities with a stored value the source has no record of.
        repaired: Repairs the compare-and-set wrote.
        errors: Entities not checked because the source call failed or its answer did
            not fit the feature.
        source_calls: Calls sent to the source.
        stopped_reason: Why the run ended early, if it did.
        findings: The entities that did not match (``GET /reconciliation`` lists at
            most a page of them).
    """

    run_id: str
    feature: str
    source: str
    started_at: datetime
    finished_at: datetime
    repair: bool
    sampled: int
    checked: int
    matched: int
    mismatched: int
    newer_at_source: int
    missing_in_store: int
    missing_at_source: int
    repaired: int
    errors: int
    source_calls: int
    stopped_reason: StopReason | None = None
    findings: list[Finding] = msgspec.field(default_factory=list)


class ReconciliationReport(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /reconciliation``: the latest run of each feature, by feature name.

    Attributes:
        runs: The latest run per feature that has one, in registry order.
        unreconciled: Features that reconciliation does not check (no source, or
            ``reconcile = false``).
    """

    runs: list[ReconciliationRun]
    unreconciled: list[str] = msgspec.field(default_factory=list)
