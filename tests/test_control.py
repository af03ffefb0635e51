"""Cancel, deadlines, backpressure and the views of queues and workers, on the real bus."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import start_system, stop_system
from e2e_helpers import wait_terminal

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.testing import serve_site, slow_route

PAGES = 20


@pytest.fixture
def slow_site(tmp_path: Path) -> Iterator[str]:
    """An index linking 20 pages that each take 0.3 s to answer."""
    links = "".join(f'<li><a href="p{i}.html">Page {i}</a></li>' for i in range(PAGES))
    (tmp_path / "index.html").write_text(
        f"<html><body><main><p>Index of pages.</p><ul>{links}</ul></main></body></html>"
    )
    routes = {f"/p{i}.html": slow_route(0.3) for i in range(PAGES)}
    with serve_site(tmp_path, routes=routes) as url:
        yield url


async def test_cancel_a_crawl_midway(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder, slow_site: str
) -> None:
    system = await start_system(
        nats_server.url, prefix, tmp_path / "data", model, scraper_concurrency=1
    )
    try:
        client = system.client
        crawl = await client.post(
            "/api/v1/crawl", json={"url": f"{slow_site}/index.html", "brand": "b"}
        )
        crawl_id = crawl.json()["task_id"]
        for _ in range(200):  # until some pages are done and most are still queued
            record = (await client.get(f"/api/v1/tasks/{crawl_id}")).json()
            if (record["progress"] or {}).get("done", 0) >= 2:
                break
            await asyncio.sleep(0.05)
        before = {
            t["task_id"]: t
            for t in (
                await client.get("/api/v1/tasks", params={"kind": "scrape", "limit": 100})
            ).json()
        }
        response = await client.delete(f"/api/v1/tasks/{crawl_id}")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        finished_before = {i for i, t in before.items() if t["status"] in {"succeeded", "failed"}}
        await asyncio.sleep(1.0)  # let anything still running reach its checkpoint
        after = {
            t["task_id"]: t
            for t in (
                await client.get("/api/v1/tasks", params={"kind": "scrape", "limit": 100})
            ).json()
        }
        cancelled = [t for t in after.values() if t["status"] == "cancelled"]
        print(
            f"CANCEL pages={len(after)} finished_before={len(finished_before)} cancelled={len(cancelled)}"
        )
        assert finished_before, "cancelled too early to see anything finished"
        assert cancelled, "nothing was left to cancel"
        for task_id, task in after.items():
            if task_id in finished_before:
                assert task == before[task_id]  # nothing else changes
            else:
                assert task["status"] == "cancelled", task
        assert (await client.get(f"/api/v1/tasks/{crawl_id}")).json()["status"] == "cancelled"
        assert (await client.delete(f"/api/v1/tasks/{crawl_id}")).status_code == 409
    finally:
        await stop_system(system)


async def test_expired_task_is_not_run(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder
) -> None:
    system = await start_system(nats_server.url, prefix, tmp_path, model)
    try:
        # The pool is busy for 0.5 s; the second ping's deadline passes while it waits.
        busy = await system.client.post("/api/v1/maintenance/ping", json={"delay_ms": 500})
        late = await system.client.post("/api/v1/maintenance/ping", json={"deadline_s": 0.1})
        record = await wait_terminal(system.client, late.json()["task_id"])
        assert record["status"] == "expired"
        assert record["error"]["type"] == "DeadlineExpired"
        assert record["result"] is None  # the job never ran
        assert (await wait_terminal(system.client, busy.json()["task_id"]))["status"] == "succeeded"
    finally:
        await stop_system(system)


async def test_full_stream_answers_503_then_recovers(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder
) -> None:
    system = await start_system(nats_server.url, prefix, tmp_path, model, stream_max_msgs=3)
    try:
        client = system.client
        statuses = []
        accepted = []
        for _ in range(6):
            response = await client.post("/api/v1/maintenance/ping", json={"delay_ms": 300})
            statuses.append(response.status_code)
            if response.status_code == 202:
                accepted.append(response.json()["task_id"])
            else:
                assert response.status_code == 503
                assert response.headers["Retry-After"].isdigit()
                assert "full" in response.json()["detail"]
        print(f"BACKPRESSURE statuses={statuses}")
        assert statuses[:3] == [202, 202, 202]
        assert 503 in statuses
        queues = (await client.get("/api/v1/queues")).json()
        normal = next(q for q in queues if q["kind"] == "maintenance" and q["priority"] == "normal")
        assert normal["pending"] + normal["in_flight"] >= 1
        for task_id in accepted:
            assert (await wait_terminal(client, task_id))["status"] == "succeeded"
        # Nothing half-way: refused submissions left no record behind.
        records = (await client.get("/api/v1/tasks", params={"kind": "maintenance"})).json()
        assert {r["task_id"] for r in records} == set(accepted)
        again = await client.post("/api/v1/maintenance/ping")
        assert again.status_code == 202
        workers = (await client.get("/api/v1/workers")).json()
        maintenance = next(w for w in workers if w["service"] == "maintenance")
        assert maintenance["concurrency"] == 1
        assert maintenance["replica_count"] == 1
        status = (await client.get("/api/v1/system/status")).json()
        assert status["status"] == "ok"
        assert status["bus"]["streams_present"] is True
        assert status["bus"]["connected"] is True
        assert status["bus"]["url"].startswith("127.0.0.1:")
    finally:
        await stop_system(system)


def test_the_workers_view_counts_each_replica_once() -> None:
    from helpline.gateway.views import workers

    def replica(name: str, yielding: bool, yielded_s: float) -> dict[str, object]:
        return {
            "replica": name,
            "services": ["scraper", "embedder"],
            "at": "2026-12-01T12:00:00+00:00",
            "pools": [
                {"kind": "scrape", "concurrency": 6, "busy": 2},
                {"kind": "crawl", "concurrency": 2, "busy": 0},
                {"kind": "embed", "concurrency": 3, "busy": 1},
            ],
            "batch_yielding": yielding,
            "batch_yielded_s": yielded_s,
        }

    view = {w["service"]: w for w in workers([replica("a", True, 2.5), replica("b", False, 1.0)])}
    scraper = view["scraper"]
    assert scraper["replica_count"] == 2
    assert (scraper["concurrency"], scraper["busy"]) == (16, 4)
    # Two pools of one replica: its yielding counted once.
    assert scraper["batch_yielding"] is True
    assert scraper["batch_yielded_s"] == 3.5
    assert view["embedder"]["batch_yielded_s"] == 3.5
    # A heartbeat from before these fields existed.
    old = replica("c", False, 0.0)
    del old["batch_yielding"], old["batch_yielded_s"]
    assert workers([old])[0]["batch_yielding"] is False
