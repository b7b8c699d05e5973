"""A stand-in for the ingest pipeline: keeps customers' features fresh in Redis.

In production a stream (CDC, an aggregation job) keeps the online store within its
freshness SLAs, so most requests find fresh values and only a few go to a source.
The benchmark has no such stream: without one, every value would go stale within a
minute (``txn_count_30m`` allows 60 s) and nearly every request would fetch from a
source. This feed rewrites the given customers' and every merchant's values every
few seconds, straight into Redis with the online store's own compare-and-set write,
from the load generator's process, so the gateway is not charged for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from datetime import UTC, datetime

from traffic import MERCHANTS

from contracts.registry import OnlineStoreSpec
from gateway.features.online_store import OnlineStore, StoredValue, lineage_id_for, to_millis


class FeatureFeed:
    """Rewrites the features of ``customers`` and every merchant every ``period_s``."""

    def __init__(
        self, redis_url: str, prefix: str, customers: list[int], period_s: float = 15.0
    ) -> None:
        self._store = OnlineStore.from_url(
            redis_url, prefix, OnlineStoreSpec(timeout_ms=1000), max_connections=8
        )
        self._customers = customers
        self._period_s = period_s
        self._rng = random.Random(13)
        self._rounds = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self.writes = 0

    def _values(
        self, entity: str, entity_id: str, now_ms: int, round_: int
    ) -> dict[str, StoredValue]:
        rng = self._rng
        if entity == "merchant":
            raw: dict[str, int | float] = {"chargeback_rate_90d": round(rng.uniform(0, 0.05), 4)}
        else:
            raw = {
                "txn_count_30m": rng.randint(0, 6),
                "txn_amount_sum_24h": round(rng.lognormvariate(4, 1), 2),
                "distinct_merchants_7d": rng.randint(1, 12),
                "account_age_days": rng.randint(5, 3000),
                "kyc_level": rng.choice([1, 2, 2, 3, 3, 3]),
                "country_risk": round(rng.betavariate(2, 8), 3),
            }
        ref = f"feed:{entity_id}:{round_}"
        lineage_id = lineage_id_for("push", "benchmark-feed", ref, 1, entity, entity_id, now_ms)
        return {
            name: StoredValue(
                value=value,
                event_time_ms=now_ms,
                ingested_at_ms=now_ms,
                lineage_id=lineage_id,
                kind="push",
                source_system="benchmark-feed",
                source_ref=ref,
                schema_version=1,
                transform="sample_aggregates_v1",
            )
            for name, value in raw.items()
        }

    async def refresh(self) -> int:
        """Write every customer's and merchant's values once, 64 writes at a time."""
        round_ = next(self._rounds)
        now_ms = to_millis(datetime.now(UTC))
        entities = [("customer", f"c-{c}") for c in self._customers]
        entities += [("merchant", f"m-{m}") for m in range(1, MERCHANTS + 1)]
        gate = asyncio.Semaphore(64)

        async def write(entity: str, entity_id: str) -> None:
            async with gate:
                values = self._values(entity, entity_id, now_ms, round_)
                await self._store.write(entity, entity_id, now_ms, values)

        await asyncio.gather(*(write(e, i) for e, i in entities))
        self.writes += len(entities)
        return len(entities)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._period_s)
            await self.refresh()

    async def start(self) -> None:
        """Write once now, then keep writing in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop writing and close the connection pool."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._store.close()
