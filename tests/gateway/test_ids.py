"""Decision ids: UUIDv7, ordered by the millisecond they were made in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from gateway.features.online_store import to_millis
from gateway.ids import new_decision_id


def test_decision_ids_are_uuid7_and_sort_by_creation_millisecond() -> None:
    ids = [new_decision_id() for _ in range(50)]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert len(set(ids)) == 50
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)
    now_ms = to_millis(datetime.now(UTC))
    assert now_ms - 60_000 < millis[0] <= now_ms
