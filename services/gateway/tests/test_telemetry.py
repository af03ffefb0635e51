"""The request middleware alone: counted when metrics are on, not when they are off."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpline.common import metrics
from helpline.gateway.app import create_app
from helpline.gateway.settings import GatewaySettings


def healthz_count() -> float:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == "helpline_http_requests_total" and sample.labels == {
                "route": "/healthz",
                "method": "GET",
                "status": "200",
            }:
                return sample.value
    return 0.0


@pytest.mark.parametrize(("enabled", "moved"), [(True, 2.0), (False, 0.0)])
async def test_requests_are_counted_only_when_metrics_are_on(enabled: bool, moved: float) -> None:
    app = create_app(GatewaySettings(nats_url="nats://unused", metrics=enabled))
    before = healthz_count()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        for _ in range(2):
            assert (await client.get("/healthz")).status_code == 200
    assert healthz_count() - before == moved
