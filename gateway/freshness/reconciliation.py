"""Reconciliation: does what the online store holds still agree with the sources?

A run takes one feature, samples entities from the online store (``SCAN`` over the
entity's keys, a bounded number of them, then a random sample), and asks the feature's
source API for each entity's current record, comparing it with the stored value:

- float64 values agree within the feature's ``tolerance`` (absolute); int64 values
  too when the tolerance is above 0, else they must be equal; bool and string values
  must be equal;
- a source record whose event time is later than the stored value's is *newer at
  source*, counted whether the values agree or not;
- an entity with a stored value the source answers 404 for is *missing at source*;
  one the source has a record of but the store no value for the feature is *missing
  in store*. The store can only be found missing a feature for ids the run knows: the
  sample is drawn from the entity's keys, which hold the entity's other features too
  (an entity whose hash lacks the feature is such a case), and ``scoregate reconcile
  --entity`` names ids of its own.

With repair, a value that disagrees (or is missing in store) is written from the
source's record through the online store's compare-and-set, with lineage kind
``reconcile``: an older source answer never overwrites a newer stored value, nor one
ingested while the run waited for the source. Values that agree are not written: a
run corrects the store, it is not another ingest path.

The source is a production system. A run reads each entity's stored value just before
its call, sends each call once (no retries, no call shared with ``/score``), and
spends from :class:`CallBudget`, the source's budget of ``reconcile_calls_per_s``,
which every run in the process shares; across processes, runs against one source take
turns (:meth:`writeback.ReconciliationStore.lock`), and a run lets go of its source a
second after its last call ended, so the budget holds globally. A run
stops when the source's breaker is not closed: it neither adds to an outage nor takes
the half-open probe that ``/score`` needs to find the source back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from contracts.features import FeatureScalar
from contracts.reconciliation import (
    Finding,
    FindingKind,
    ReconciliationRun,
    RepairOutcome,
    StopReason,
)
from contracts.registry import DType, Feature
from gateway.breaker import BreakerOpen
from gateway.deadline import Deadline
from gateway.features.assembler import path_value, stored_from_record
from gateway.features.online_store import (
    EntityWrite,
    OnlineStore,
    StoredValue,
    StoreUnavailable,
    from_millis,
)
from gateway.features.sources import RecordNotFound, SourceBusy, SourceClient, SourceError
from gateway.metrics import RECONCILIATION_FINDINGS, RECONCILIATION_REPAIRS, RECONCILIATION_RUNS
from gateway.registry import Registry
from writeback import AuditUnavailable, ReconciliationStore

log = logging.getLogger(__name__)

WINDOW_S = 1.0
"""The window a source's budget of calls per second is counted over."""


def values_agree(
    dtype: DType, tolerance: float, stored: FeatureScalar | None, source: FeatureScalar | None
) -> bool:
    """Whether a stored value and a source's agree, by the feature's dtype and tolerance.

    Args:
        dtype: The feature's dtype.
        tolerance: The feature's absolute tolerance, for float64 (and int64 when above 0).
        stored: The stored value.
        source: The source's value, as the feature's dtype.

    Returns:
        True when they agree.
    """
    if stored is None or source is None:
        return stored is source
    numeric = dtype == "float64" or (dtype == "int64" and tolerance > 0)
    if numeric and not isinstance(stored, bool | str) and not isinstance(source, bool | str):
        return abs(float(stored) - float(source)) <= tolerance
    return type(stored) is type(source) and stored == source


def classify(
    feature: Feature,
    stored: StoredValue | None,
    source_value: FeatureScalar | None,
    source_event_time_ms: int | None,
) -> FindingKind:
    """What one entity's check found.

    Args:
        feature: The feature checked.
        stored: The value the store held, or None when it held none.
        source_value: The source's value, or None when the source has no record.
        source_event_time_ms: The source record's event time, None without a record.

    Returns:
        The finding's kind; both sides without a value is a ``match``.
    """
    if source_event_time_ms is None:
        return "match" if stored is None else "missing_at_source"
    if stored is None:
        return "missing_in_store"
    if not values_agree(feature.dtype, feature.tolerance, stored.value, source_value):
        return "mismatch"
    return "newer_at_source" if source_event_time_ms > stored.event_time_ms else "match"


class CallBudget:
    """A source's budget of calls per second, spent one call at a time.

    Calls are paced ``1 / calls_per_s`` apart (a token bucket with a burst of one),
    and a call may start only once the call ``n`` before it (``n`` = the budget per
    second, at least one) has ended and a second has passed since: the source
    receives each call before it answers, so however the network delays requests, no
    second at the source ever sees more than ``n`` calls. A caller waits for its turn
    asleep (never polling), behind the callers that came first.

    Args:
        calls_per_s: The budget.
        clock: Seconds on a monotonic clock.
        sleep: Sleeps the given seconds (``asyncio.sleep``).
    """

    def __init__(
        self,
        calls_per_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.calls_per_s = calls_per_s
        self._interval_s = 1 / calls_per_s
        self._window = max(1, math.floor(calls_per_s * WINDOW_S))
        self._clock = clock
        self._sleep = sleep
        self._turn = asyncio.Lock()
        self._next_start = -math.inf
        # Per recent call (the last ``window`` of them), a future of when it ended.
        self._recent: collections.deque[asyncio.Future[float]] = collections.deque()

    @asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """Wait for the budget to allow a call, then count the body as that call."""
        async with self._turn:
            earliest = self._next_start
            if len(self._recent) == self._window:
                ended = await asyncio.shield(self._recent[0])
                earliest = max(earliest, ended + WINDOW_S)
            while (wait := earliest - self._clock()) > 0:
                await self._sleep(wait)
            self._next_start = self._clock() + self._interval_s
            if len(self._recent) == self._window:
                self._recent.popleft()
            ended_at: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            self._recent.append(ended_at)
        try:
            yield
        finally:
            ended_at.set_result(self._clock())

    async def settle(self) -> None:
        """Wait until a second has passed since the last call ended.

        A run against the source in another process, which counts its calls on a budget
        of its own, may then start without its first calls sharing a second at the
        source with this process's last ones.
        """
        async with self._turn:
            if self._recent:
                ended = await asyncio.shield(self._recent[-1])
                while (wait := ended + WINDOW_S - self._clock()) > 0:
                    await self._sleep(wait)


class CallBudgets:
    """One :class:`CallBudget` per source, made on first use and shared from then on."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._budgets: dict[str, CallBudget] = {}

    def of(self, source: str, calls_per_s: float) -> CallBudget:
        """The budget of ``source``."""
        budget = self._budgets.get(source)
        if budget is None or budget.calls_per_s != calls_per_s:
            budget = self._budgets[source] = CallBudget(calls_per_s, self._clock)
        return budget


def _glob_escaped(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


class EntitySampler:
    """Entity ids sampled from the online store's keys.

    Args:
        client: A Redis client on the online store's server.
        store: The online store (its key layout).
        scan_count: ``COUNT`` of each ``SCAN`` call.
        max_keys: Keys read at most before the sample is drawn from them.
        max_scans: ``SCAN`` calls at most, so a sparse match over a large keyspace
            ends too.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        store: OnlineStore,
        scan_count: int = 500,
        max_keys: int = 10_000,
        max_scans: int = 1_000,
    ) -> None:
        self._client = client
        self._store = store
        self._scan_count = scan_count
        self._max_keys = max_keys
        self._max_scans = max_scans
        self._random = random.SystemRandom()

    async def sample(self, entity: str, size: int) -> list[str]:
        """Up to ``size`` ids of ``entity`` with a hash in the store, drawn at random.

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        prefix = self._store.key(entity, "")
        pattern = _glob_escaped(prefix) + "*"
        ids: set[str] = set()
        cursor: int = 0
        try:
            for _ in range(self._max_scans):
                cursor, keys = await self._client.scan(
                    cursor, match=pattern, count=self._scan_count
                )
                ids.update(
                    (key.decode() if isinstance(key, bytes) else key)[len(prefix) :] for key in keys
                )
                if cursor == 0 or len(ids) >= self._max_keys:
                    break
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"could not sample the online store: {exc}") from exc
        ids.discard("")
        found = sorted(ids)
        return self._random.sample(found, min(size, len(found)))

    async def close(self) -> None:
        """Close the client."""
        await self._client.aclose()


@dataclass
class _Tally:
    """What a run counted, entity by entity."""

    sampled: int = 0
    checked: int = 0
    matched: int = 0
    mismatched: int = 0
    newer_at_source: int = 0
    missing_in_store: int = 0
    missing_at_source: int = 0
    repaired: int = 0
    errors: int = 0
    source_calls: int = 0
    stopped_reason: StopReason | None = None
    findings: list[Finding] = field(default_factory=list)

    def add(self, finding: Finding, source_newer: bool) -> None:
        self.findings.append(finding)
        self.checked += 1
        self.newer_at_source += source_newer
        if finding.kind in ("match", "newer_at_source"):
            self.matched += 1
        elif finding.kind == "mismatch":
            self.mismatched += 1
        elif finding.kind == "missing_in_store":
            self.missing_in_store += 1
        else:
            self.missing_at_source += 1
        self.repaired += finding.repaired


class ReconciliationError(Exception):
    """A run cannot start: the feature is unknown or has nothing to reconcile against."""


class Reconciler:
    """Runs reconciliations of single features against their sources.

    Args:
        registry: The registry.
        store: The online store.
        sources: The source clients, by source name (their breakers are the ones
            ``/score`` uses).
        sampler: Where entity ids come from.
        runs: Where runs are stored and their lock is taken; without it runs are
            neither stored nor kept apart across processes.
        budgets: The sources' call budgets, shared by every run of this process.
    """

    def __init__(
        self,
        registry: Registry,
        store: OnlineStore,
        sources: Mapping[str, SourceClient],
        sampler: EntitySampler,
        runs: ReconciliationStore | None,
        budgets: CallBudgets | None = None,
    ) -> None:
        self._registry = registry
        self._store = store
        self._sources = sources
        self._sampler = sampler
        self._runs = runs
        self._budgets = budgets or CallBudgets()
        self._placeholders = {
            name: f"{{{entity.key}}}" for name, entity in registry.entities.items()
        }

    def reconcilable(self) -> list[str]:
        """The features reconciliation checks: those with a source and ``reconcile``."""
        return [
            f.name
            for f in self._registry.features.values()
            if f.reconcile and f.source is not None and f.path is not None
        ]

    def _feature(self, name: str) -> Feature:
        feature = self._registry.features.get(name)
        if feature is None:
            raise ReconciliationError(f"no feature {name!r} in the registry")
        if feature.source is None or feature.path is None:
            raise ReconciliationError(f"feature {name!r} has no source to reconcile against")
        if not feature.reconcile:
            raise ReconciliationError(f"feature {name!r} is declared with reconcile = false")
        return feature

    async def run(
        self,
        name: str,
        *,
        sample: int = 100,
        repair: bool = False,
        entity_ids: Sequence[str] = (),
        wait: bool = True,
        stopping: asyncio.Event | None = None,
    ) -> ReconciliationRun | None:
        """Reconcile one feature: sample, fetch under the budget, compare, maybe repair.

        Args:
            name: The feature.
            sample: Entities to sample from the store (0 for none).
            repair: Write the source's value where the store disagrees or lacks one.
            entity_ids: Ids to check besides the sample.
            wait: Wait for a run against the same source in another process to end;
                else return None at once when one holds the source.
            stopping: Set when the process stops: the run ends after its current call.

        Returns:
            The run (stored, with its findings that did not match), or None when
            ``wait`` is false and another run holds the source.

        Raises:
            ReconciliationError: The feature cannot be reconciled.
            AuditUnavailable: PostgreSQL could not be reached for the lock or the run.
        """
        feature = self._feature(name)
        if self._runs is None:
            return await self._run(feature, sample, repair, entity_ids, stopping)
        assert feature.source is not None  # checked by _feature
        async with self._runs.lock(feature.source, wait=wait) as held:
            if not held:
                return None
            run, findings = await self._run_and_keep(feature, sample, repair, entity_ids, stopping)
            await self._runs.save(run, findings)
            # The next holder of the lock, in any process, starts with a second of its own.
            await self._budget(feature.source).settle()
        return run

    def _budget(self, source: str) -> CallBudget:
        return self._budgets.of(source, self._sources[source].source.reconcile_calls_per_s)

    async def _run(
        self,
        feature: Feature,
        sample: int,
        repair: bool,
        entity_ids: Sequence[str],
        stopping: asyncio.Event | None,
    ) -> ReconciliationRun:
        run, _ = await self._run_and_keep(feature, sample, repair, entity_ids, stopping)
        return run

    async def _run_and_keep(
        self,
        feature: Feature,
        sample: int,
        repair: bool,
        entity_ids: Sequence[str],
        stopping: asyncio.Event | None,
    ) -> tuple[ReconciliationRun, list[Finding]]:
        source_name = feature.source
        assert source_name is not None  # checked by _feature
        client = self._sources[source_name]
        budget = self._budget(source_name)
        run_id = str(uuid.uuid4())
        started_at = datetime.now(UTC)
        tally = _Tally()
        try:
            ids = await self._sampler.sample(feature.entity, sample) if sample else []
        except StoreUnavailable as exc:
            log.warning("reconciliation of %s could not sample: %s", feature.name, exc)
            ids, tally.stopped_reason = [], "store_unavailable"
        ids = list(dict.fromkeys([*ids, *entity_ids]))
        tally.sampled = len(ids)
        for entity_id in ids:
            if tally.stopped_reason is not None:
                break
            async with budget.call():
                # Looked at once the budget allows the call, just before it is made.
                if stopping is not None and stopping.is_set():
                    tally.stopped_reason = "shutdown"
                elif client.breaker.state != "closed":
                    tally.stopped_reason = "breaker_open"
                else:
                    await self._check(feature, client, entity_id, repair, tally)
        finished_at = datetime.now(UTC)
        self._count(feature.name, tally)
        run = ReconciliationRun(
            run_id=run_id,
            feature=feature.name,
            source=source_name,
            started_at=started_at,
            finished_at=finished_at,
            repair=repair,
            sampled=tally.sampled,
            checked=tally.checked,
            matched=tally.matched,
            mismatched=tally.mismatched,
            newer_at_source=tally.newer_at_source,
            missing_in_store=tally.missing_in_store,
            missing_at_source=tally.missing_at_source,
            repaired=tally.repaired,
            errors=tally.errors,
            source_calls=tally.source_calls,
            stopped_reason=tally.stopped_reason,
            findings=[f for f in tally.findings if f.kind != "match"],
        )
        return run, tally.findings

    async def _check(
        self,
        feature: Feature,
        client: SourceClient,
        entity_id: str,
        repair: bool,
        tally: _Tally,
    ) -> None:
        """Read one entity's stored value, call the source once, compare, maybe repair."""
        entity = feature.entity
        assert feature.path is not None  # checked by _feature
        path = feature.path.replace(self._placeholders[entity], path_value(entity_id))
        timeout_s = client.source.timeout_ms / 1000
        try:
            [row] = await self._store.read([(entity, entity_id, (feature.name,))], Deadline(1.0))
        except StoreUnavailable as exc:
            log.warning("reconciliation of %s could not read the store: %s", feature.name, exc)
            tally.stopped_reason = "store_unavailable"
            return
        stored = row.get(feature.name)
        record = None
        try:
            tally.source_calls += 1
            record = await client.fetch_once(path, Deadline(timeout_s + 1.0))
        except RecordNotFound:
            pass
        except (BreakerOpen, SourceBusy) as exc:
            tally.source_calls -= 1  # refused before it was sent
            if isinstance(exc, BreakerOpen):
                tally.stopped_reason = "breaker_open"
            else:
                tally.errors += 1
            return
        except (SourceError, TimeoutError) as exc:
            log.info("reconciliation of %s: %s failed: %s", feature.name, entity_id, exc)
            tally.errors += 1
            return
        found_at = datetime.now(UTC)
        fetched: StoredValue | None = None
        if record is not None:
            try:
                fetched = stored_from_record(
                    record, feature, f"source:{client.source.name}", "reconcile"
                )
            except (KeyError, TypeError) as exc:
                log.warning(
                    "reconciliation of %s: the source's answer does not fit: %r", feature.name, exc
                )
                tally.errors += 1
                return
        kind = classify(
            feature,
            stored,
            None if fetched is None else fetched.value,
            None if fetched is None else fetched.event_time_ms,
        )
        outcome: RepairOutcome | None = None
        if repair and fetched is not None and kind in ("mismatch", "missing_in_store"):
            outcome = await self._repair(entity, entity_id, feature.name, fetched, tally)
        source_newer = (
            fetched is not None
            and stored is not None
            and fetched.event_time_ms > stored.event_time_ms
        )
        tally.add(
            Finding(
                entity=entity,
                entity_id=entity_id,
                kind=kind,
                stored_value=None if stored is None else stored.value,
                source_value=None if fetched is None else fetched.value,
                stored_event_time=None if stored is None else from_millis(stored.event_time_ms),
                source_event_time=None if record is None else record.event_time,
                stored_lineage_id=None if stored is None else stored.lineage_id,
                source_ref=None if record is None else record.ref,
                repaired=outcome == "written",
                repair_outcome=outcome,
                found_at=found_at,
            ),
            source_newer,
        )

    async def _repair(
        self, entity: str, entity_id: str, name: str, fetched: StoredValue, tally: _Tally
    ) -> RepairOutcome | None:
        """Write the source's value through the compare-and-set; what it did, or None."""
        write = EntityWrite(entity, entity_id, fetched.event_time_ms, 0, {name: fetched})
        try:
            [outcomes] = await self._store.write_many([write], Deadline(1.0))
        except StoreUnavailable as exc:
            log.warning("reconciliation could not repair %s of %s: %s", name, entity_id, exc)
            tally.stopped_reason = "store_unavailable"
            return None
        return outcomes[name]

    @staticmethod
    def _count(feature: str, tally: _Tally) -> None:
        RECONCILIATION_RUNS.labels(
            feature=feature, stopped_reason=tally.stopped_reason or "none"
        ).inc()
        kinds = collections.Counter(f.kind for f in tally.findings)
        for kind, count in kinds.items():
            RECONCILIATION_FINDINGS.labels(feature=feature, kind=kind).inc(count)
        if tally.repaired:
            RECONCILIATION_REPAIRS.labels(feature=feature).inc(tally.repaired)


class ReconciliationJob:
    """Reconciles every reconcilable feature in the background, one run at a time.

    Each round runs every feature in turn (a feature whose source another process is
    reconciling is left to that process this round), then deletes the runs past the
    retention.

    Args:
        reconciler: Runs the reconciliations.
        runs: Where runs are stored.
        interval_s: Seconds between rounds (from the end of one to the start of the next).
        sample: Entities sampled per feature and round.
        repair: Whether the rounds repair the store.
        retention_days: Runs (and their findings) are kept this many days.
    """

    def __init__(
        self,
        reconciler: Reconciler,
        runs: ReconciliationStore,
        *,
        interval_s: float,
        sample: int,
        repair: bool,
        retention_days: int,
    ) -> None:
        self._reconciler = reconciler
        self._runs = runs
        self._interval_s = interval_s
        self._sample = sample
        self._repair = repair
        self._retention = timedelta(days=retention_days)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> list[ReconciliationRun]:
        """One round over every reconcilable feature; the runs it made."""
        made = []
        for name in self._reconciler.reconcilable():
            if self._stopping.is_set():
                break
            try:
                run = await self._reconciler.run(
                    name,
                    sample=self._sample,
                    repair=self._repair,
                    wait=False,
                    stopping=self._stopping,
                )
            except AuditUnavailable as exc:
                log.warning("reconciliation of %s not stored: %s", name, exc)
                continue
            if run is not None:
                made.append(run)
        try:
            await self._runs.drop_before(datetime.now(UTC) - self._retention)
        except AuditUnavailable as exc:
            log.warning("old reconciliation runs not dropped: %s", exc)
        return made

    async def start(self) -> None:
        """Run a round every ``interval_s``, the first one interval after the start."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._loop(), name="reconciliation")

    async def stop(self, grace_s: float = 2.0) -> None:
        """Let a run in progress end after its current call (within ``grace_s``), then stop."""
        if self._task is None:
            return
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), grace_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)
            if self._stopping.is_set():
                return
            try:
                await self.run_once()
            except Exception:
                log.exception("reconciliation round failed")


def summary(runs: Iterable[ReconciliationRun]) -> list[dict[str, object]]:
    """The runs' counts as rows, for the command line (findings left out)."""
    return [
        {
            "feature": run.feature,
            "source": run.source,
            "run_id": run.run_id,
            "repair": run.repair,
            "sampled": run.sampled,
            "checked": run.checked,
            "matched": run.matched,
            "mismatched": run.mismatched,
            "newer_at_source": run.newer_at_source,
            "missing_in_store": run.missing_in_store,
            "missing_at_source": run.missing_at_source,
            "repaired": run.repaired,
            "errors": run.errors,
            "source_calls": run.source_calls,
            "stopped_reason": run.stopped_reason,
            "seconds": round((run.finished_at - run.started_at).total_seconds(), 3),
        }
        for run in runs
    ]
