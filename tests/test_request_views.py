"""The request-log views: any gateway replica answers for every replica's requests."""

from __future__ import annotations

from pathlib import Path

import httpx
from conftest import System, settings_for
from e2e_helpers import eventually, wait_terminal

from helpline.cli.natsserver import NatsServer
from helpline.gateway.app import GatewayComponent
from helpline.gateway.settings import GatewaySettings
from helpline.testing import TEST_ADMIN_KEY, bearer


async def test_stats_slow_requests_and_errors_over_two_replicas(
    system: System, nats_server: NatsServer, prefix: str, tmp_path: Path, spans: object
) -> None:
    # A second gateway replica on the same bus, with its own client.
    other = GatewayComponent(settings_for(GatewaySettings, nats_server.url, prefix, tmp_path))  # type: ignore[arg-type]
    await other.start(system.host.bus)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=other.app),
        base_url="http://b",
        headers=bearer(TEST_ADMIN_KEY),
    )
    try:
        # On replica A: three pings, one of them slow (a no-op held 1.2 s) and waited for.
        for _ in range(2):
            assert (await system.client.post("/api/v1/maintenance/ping")).status_code == 202
        # On replica B: a request that fails (404) and a scrape that fails (its page is gone).
        assert (await client.get("/api/v1/tasks/not-there")).status_code == 404
        failing = await client.post(
            "/api/v1/scrape",
            json={"url": "http://127.0.0.1:9/missing.html", "brand": "acme", "deadline_s": 30},
        )
        assert failing.status_code == 202
        failed_id = failing.json()["task_id"]

        async def logged(n: int) -> bool:
            stats = (await client.get("/api/v1/metrics/stats", params={"last_n": 1000})).json()
            return stats["overall"]["count"] >= n

        assert await eventually(lambda: logged(4), 10.0)
        stats = (await system.client.get("/api/v1/metrics/stats", params={"last_n": 1000})).json()
        ping = stats["routes"]["POST /api/v1/maintenance/ping"]
        assert ping["count"] == 2
        assert ping["p50_ms"] > 0
        assert stats["routes"]["GET /api/v1/tasks/{task_id}"]["client_errors"] == 1

        # Slow: any replica lists the other's slow request, with the trace of its response.
        slow_response = await client.post(
            "/api/v1/query", json={"question": "anything", "brand": "nobody", "cache": False}
        )
        assert slow_response.status_code == 200
        threshold = slow_response.json()["duration_ms"] * 0.5
        slow_seen: list[dict] = []

        async def slow_listed() -> bool:
            slow_seen[:] = (
                await system.client.get(
                    "/api/v1/metrics/slow-requests", params={"threshold_ms": threshold}
                )
            ).json()
            return any(e["trace_id"] == slow_response.headers["x-trace-id"] for e in slow_seen)

        assert await eventually(slow_listed, 10.0), slow_seen
        entry = next(e for e in slow_seen if e["trace_id"] == slow_response.headers["x-trace-id"])
        assert entry["route"] == "/api/v1/query"
        assert entry["task_id"] == slow_response.json()["task_id"]

        # Errors: the failed scrape with its task id and trace; 4xx only when asked.
        record = await wait_terminal(system.client, failed_id)
        assert record["status"] == "failed"
        found = (await system.client.get("/api/v1/metrics/errors")).json()
        task_errors = [e for e in found if e["source"] == "task"]
        assert any(
            e["task_id"] == failed_id and e["trace_id"] == failing.headers["x-trace-id"]
            for e in task_errors
        ), found
        assert not any(e["source"] == "request" for e in found)
        with_4xx = (await client.get("/api/v1/metrics/errors", params={"include_4xx": True})).json()
        assert any(e.get("route") == "/api/v1/tasks/{task_id}" for e in with_4xx)
    finally:
        await client.aclose()
        await other.stop()
