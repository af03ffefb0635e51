"""Prometheus metrics of a running system: they parse, and move by exactly what was done."""

from __future__ import annotations

import asyncio
import re

import httpx
from conftest import System
from e2e_helpers import eventually, wait_terminal
from prometheus_client.parser import text_string_to_metric_families

from helpline.common.breaker import BreakerPolicy
from helpline.common.health import HealthServer


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels (parsed by prometheus-client)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(seen: dict, name: str, **labels: str) -> float:
    return seen.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(system: System) -> dict:
    response = await system.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_requests_and_tasks_are_counted_exactly(system: System) -> None:
    before = await scrape(system)
    pings = [await system.client.post("/api/v1/maintenance/ping") for _ in range(3)]
    assert all(p.status_code == 202 for p in pings)
    for ping in pings:
        assert (await wait_terminal(system.client, ping.json()["task_id"]))["status"] == "succeeded"
    missing = await system.client.get("/api/v1/tasks/no-such-task")
    assert missing.status_code == 404
    after = await scrape(system)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"route": "/api/v1/maintenance/ping", "method": "POST"}
    assert moved("helpline_http_requests_total", **route, status="202") == 3
    assert moved("helpline_http_request_duration_seconds_count", **route) == 3
    assert (
        moved(
            "helpline_http_requests_total",
            route="/api/v1/tasks/{task_id}",
            method="GET",
            status="404",
        )
        >= 1
    )
    task = {"kind": "maintenance", "priority": "normal"}
    assert moved("helpline_tasks_total", **task, outcome="succeeded") == 3
    assert moved("helpline_task_run_seconds_count", **task) == 3
    assert moved("helpline_task_queue_wait_seconds_count", **task) == 3
    # Label values are templates and fixed sets, never a task id or a path.
    for name, labels in after:
        for _, label in labels:
            assert "no-such-task" not in label, (name, labels)


async def test_every_response_names_its_trace(system: System, spans: object) -> None:
    response = await system.client.post("/api/v1/maintenance/ping")
    trace_id = response.headers["x-trace-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    record = await wait_terminal(system.client, response.json()["task_id"])
    assert record["status"] == "succeeded"
    # The task's record carries the trace of the request that submitted it.
    assert record["trace_id"] == trace_id
    # A question: the answer names its trace, and its record (written by the tracker from
    # rag's outcome) the same one, carried across the bus.
    asked = await system.client.post(
        "/api/v1/query", json={"question": "anything at all", "brand": "nobody", "cache": False}
    )
    assert asked.status_code == 200
    assert asked.json()["trace_id"] == asked.headers["x-trace-id"]
    query_id = asked.json()["task_id"]

    async def recorded() -> bool:
        return (await system.client.get(f"/api/v1/tasks/{query_id}")).status_code == 200

    assert await eventually(recorded, 10.0)  # written after the answer went out
    query_record = (await system.client.get(f"/api/v1/tasks/{query_id}")).json()
    assert query_record["trace_id"] == asked.headers["x-trace-id"]


async def test_queues_breakers_and_cache_are_exported(system: System) -> None:
    # A question answered twice: a miss, then a hit.
    body = {"question": "What does error FW-409 mean?", "brand": "nobody"}
    assert (await system.client.post("/api/v1/query", json=body)).status_code == 200
    before = await scrape(system)
    assert (await system.client.post("/api/v1/query", json=body)).status_code == 200
    system.host.bus.breakers.get("metrics-test-dependency", BreakerPolicy(failures=1, open_s=60))
    system.host.bus.breakers.get("host:docs.example.com", BreakerPolicy(failures=1, open_s=60))
    after = await scrape(system)
    hits = value(after, "helpline_answer_cache_lookups_total", result="hit") - value(
        before, "helpline_answer_cache_lookups_total", result="hit"
    )
    assert hits == 1
    assert ("helpline_queue_pending", (("kind", "query"), ("priority", "critical"))) in after
    assert (
        "helpline_breaker_state",
        (("dependency", "metrics-test-dependency"),),
    ) in after
    assert value(after, "helpline_breaker_state", dependency="metrics-test-dependency") == 0.0
    # Per-site breakers are counted, never named.
    assert value(after, "helpline_site_breakers", state="closed") >= 1
    assert not any("docs.example.com" in str(key) for key in after)


async def test_a_workers_probes_serve_its_metrics(system: System) -> None:
    probes = HealthServer("127.0.0.1", 0, system.host.bus.streams_present)
    await probes.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{probes.port}") as client:
            response = await client.get("/metrics")
            ready = await client.get("/readyz")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        families = {f.name for f in text_string_to_metric_families(response.text)}
        assert {"helpline_tasks", "helpline_breaker_state"} <= families
        assert ready.json() == {"status": "ready"}
    finally:
        await probes.stop()
    await asyncio.sleep(0)
