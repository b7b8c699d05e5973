"""A cap on the ``/score`` requests in flight in one process."""

from __future__ import annotations

from gateway.errors import Unavailable


class Admission:
    """A cap on the ``/score`` requests in flight: past it, answer 503 at once.

    Under overload a gateway that queues makes every caller wait and time out; one
    that refuses the excess keeps serving the rest within their deadlines, and tells
    the others when to come back.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    async def __aenter__(self) -> None:
        if self.in_flight >= self.limit:
            raise Unavailable(
                f"overloaded: {self.limit} requests in flight; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1

    async def __aexit__(self, *_: object) -> None:
        self.in_flight -= 1
