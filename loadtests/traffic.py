"""What the load looks like: score requests and the feature values behind them.

Shared by the benchmark and the locust scenarios. The requests follow the sample
registry of ``scoregate dev`` (model ``fraud``, customer and merchant entities): card
amounts are lognormal around 33 (a long tail of large ones), four in ten are
card-present, customers are spread over the seeded range and merchants over 20.

The dev stack's seeding leaves every tenth customer out of the online store (served
from its source on first use) and pushes every seventh an hour old (stale, refreshed
from its source); ``fresh_customers`` are the others.
"""

from __future__ import annotations

import random
from typing import Any

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
    """Customers the dev stack's seeding pushes with recent event times."""
    return [i for i in range(1, customers + 1) if i % 10 != 0 and i % 7 != 0]
