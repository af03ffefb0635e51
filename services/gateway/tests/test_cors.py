"""CORS: off unless origins are listed; a listed origin may send the key and read the
rate-limit and trace headers."""

from __future__ import annotations

import httpx
import pytest

from helpline.gateway.app import create_app
from helpline.gateway.settings import GatewaySettings

PREFLIGHT = {
    "Origin": "https://help.example.com",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


@pytest.mark.parametrize("origins", [[], ["https://help.example.com"]])
async def test_cross_origin_requests_only_from_listed_origins(origins: list[str]) -> None:
    app = create_app(GatewaySettings(nats_url="nats://unused", cors_origins=origins))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        preflight = await client.options("/api/v1/query", headers=PREFLIGHT)
        simple = await client.get("/healthz", headers={"Origin": "https://help.example.com"})
        other = await client.get("/healthz", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in other.headers
    if not origins:
        assert "access-control-allow-origin" not in preflight.headers
        assert "access-control-allow-origin" not in simple.headers
        return
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://help.example.com"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert simple.headers["access-control-allow-origin"] == "https://help.example.com"
    exposed = simple.headers["access-control-expose-headers"].lower()
    assert "ratelimit-remaining" in exposed
    assert "x-trace-id" in exposed
