"""The time budget of one request, which every dependency call spends from."""

from __future__ import annotations

import time


class Deadline:
    """A point in monotonic time after which nothing of the request may run."""

    __slots__ = ("budget_s", "expires_at")

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.expires_at = time.monotonic() + budget_s

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.expires_at - time.monotonic())

    def within(self, limit_s: float) -> float:
        """The timeout for one call: its own limit, cut to what the request has left."""
        return min(limit_s, self.remaining())

    def reserving(self, reserve_s: float) -> Deadline:
        """A deadline ``reserve_s`` earlier, for a stage that must leave time to later ones."""
        earlier = Deadline.__new__(Deadline)
        earlier.budget_s = max(0.0, self.budget_s - reserve_s)
        earlier.expires_at = self.expires_at - reserve_s
        return earlier
