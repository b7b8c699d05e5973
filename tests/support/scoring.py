"""Score requests and the feature pushes that make their features fresh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

Client = httpx.AsyncClient

CUSTOMER_FEATURES = {
    "txn_count_30m": 2,
    "txn_amount_sum_24h": 310.5,
    "distinct_merchants_7d": 4,
    "account_age_days": 700,
    "kyc_level": 3,
    "country_risk": 0.1,
}


async def push(
    client: Client,
    entities: dict[str, str],
    features: dict[str, Any],
    event_time: datetime,
    ref: str = "orders-cdc:42",
) -> dict[str, Any]:
    response = await client.post(
        "/features/push",
        json={
            "entities": entities,
            "features": features,
            "event_time": event_time.isoformat(),
            "lineage": {
                "source_system": "orders-cdc",
                "source_ref": ref,
                "schema_version": 2,
                "transform": "agg_v1",
            },
        },
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def seed(client: Client, customer: str, merchant: str, age: timedelta) -> dict[str, Any]:
    when = datetime.now(UTC) - age
    pushed = await push(client, {"customer_id": customer}, CUSTOMER_FEATURES, when)
    await push(client, {"merchant_id": merchant}, {"chargeback_rate_90d": 0.02}, when)
    return pushed


def body(customer: str = "c-1", merchant: str = "m-1", **extra: Any) -> dict[str, Any]:
    return {
        "model": "fraud",
        "entities": {"customer_id": customer, "merchant_id": merchant},
        "context": {"amount": 120.5, "card_present": False},
        **extra,
    }
