"""What the load looks like: score requests and the feature values behind them.

Shared by the benchmark and the locust scenarios. The requests follow the sample
registry of ``scoregate dev`` (model ``fraud``, customer and merchant entities): card
amounts are lognormal around 33 (a long tail of large ones), four in ten are
card-present, customers are spread over the seeded range and merchants over 20.

The dev stack leaves every tenth customer out of the online store (served from its
source on first use) and pushes every seventh an hour old (stale, refreshed from its
source); its ingest worker keeps the others fresh from the sample streams
(``fresh_customers``, the stack's own ``streamed_customers``).
"""

from __future__ import annotations

import random
from typing import Any

from scoregate_dev.stack import streamed_customers

MODEL = "fraud"
MERCHANTS = 20


def score_body(rng: random.Random, customers: int, request_id: str | None) -> dict[str, Any]:
    """One ``POST /score`` body for a random customer and merchant."""
    body: dict[str, Any] = {
        "model": MODEL,
        "entities": {
            "customer_id": f"c-{rng.randint(1, customers)}",
            "merchant_id": f"m-{rng.randint(1, MERCHANTS)}",
        },
        "context": {
            "amount": round(rng.lognormvariate(3.5, 1.1), 2),
            "card_present": rng.random() < 0.4,
        },
    }
    if request_id is not None:
        body["request_id"] = request_id
    return body


def fresh_customers(customers: int) -> list[int]:
    """Customers the dev stack's streams keep fresh."""
    return streamed_customers(customers)
