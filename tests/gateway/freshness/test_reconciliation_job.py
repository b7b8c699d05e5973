"""The gateway's background reconciliation: rounds over every feature, results served."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.support.gateway import serve
from tests.support.keys import bearer
from tests.support.scoring import CUSTOMER_FEATURES, seed

pytestmark = pytest.mark.services

FEATURES = [*CUSTOMER_FEATURES, "chargeback_rate_90d"]
"""Every stored feature of the sample registry: the customer's and the merchant's."""


async def test_the_gateway_reconciles_every_feature_in_the_background(
    settings: GatewaySettings,
) -> None:
    every_second = msgspec.structs.replace(
        settings, reconcile_interval_s=1, reconcile_sample=5, reconcile_repair=True
    )
    async with serve(create_app(every_second)) as client:
        await seed(client, "c-job-1", "m-job", timedelta(minutes=1))
        async with asyncio.timeout(60):
            while True:
                report = await client.get("/reconciliation", headers=bearer("operator"))
                assert report.status_code == 200, report.text
                runs = {run["feature"]: run for run in report.json()["runs"]}
                if set(FEATURES) <= set(runs) and all(runs[name]["checked"] for name in FEATURES):
                    break
                await asyncio.sleep(0.2)
        assert runs["txn_count_30m"]["repair"] is True
        metrics = (await client.get("/metrics", headers=bearer("operator"))).text
    assert 'scoregate_reconciliation_runs_total{feature="txn_count_30m"' in metrics
    assert "scoregate_reconciliation_findings_total" in metrics
