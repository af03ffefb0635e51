"""Batch scrapes: limits that hold across scraper replicas, and a replica killed mid-batch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest
from conftest import start_system, stop_system
from e2e_helpers import wait_terminal

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.testing import ServiceProcess, serve_site

pytestmark = pytest.mark.slow


class Gauge:
    """Pages that take `seconds`, counting how many are being served at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.now = 0
        self.peak = 0
        self.starts: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, request: SimpleHTTPRequestHandler) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.starts.append(time.monotonic())
        try:
            time.sleep(self.seconds)
            page = request.path.strip("/").replace(".html", "")
            body = f"<html><head><title>{page}</title></head><body><main><p>Batch page {page} says its code is {page.upper()}-OK.</p></main></body></html>".encode()
            request.send_response(200)
            request.send_header("Content-Type", "text/html")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
        finally:
            with self._lock:
                self.now -= 1


@pytest.fixture
def gauge_site(tmp_path: Path) -> Iterator[tuple[str, Gauge, int]]:
    count = 40
    gauge = Gauge(0.15)
    with serve_site(tmp_path, routes={f"/b{i}.html": gauge for i in range(count)}) as url:
        yield url, gauge, count


def scraper_env(prefix: str) -> dict[str, str]:
    return {
        "HELPLINE_BUS_PREFIX": prefix,
        "HELPLINE_FILE_STORAGE": "false",
        "HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1",
        "HELPLINE_SCRAPER_CONCURRENCY": "6",
        "HELPLINE_ACK_WAIT_S": "3",
        "HELPLINE_SCRAPER_TIMEOUT_S": "5",
        "HELPLINE_BACKOFF_BASE_S": "0.05",
        "HELPLINE_MAX_DELIVER": "6",
        "HELPLINE_LOG_LEVEL": "WARNING",
    }


async def test_batch_limits_hold_across_replicas_and_a_killed_replica_loses_nothing(
    nats_server: NatsServer,
    prefix: str,
    tmp_path: Path,
    model: Embedder,
    gauge_site: tuple[str, Gauge, int],
) -> None:
    url, gauge, count = gauge_site
    system = await start_system(
        nats_server.url,
        prefix,
        tmp_path / "host",
        model,
        without=frozenset({"scraper"}),
        ack_wait_s=3.0,
    )
    first = ServiceProcess("scraper", nats_server.url, tmp_path / "s1", scraper_env(prefix)).start()
    second = ServiceProcess(
        "scraper", nats_server.url, tmp_path / "s2", scraper_env(prefix)
    ).start()
    try:
        urls = [f"{url}/b{i}.html" for i in range(count)]
        response = await system.client.post(
            "/api/v1/scrape/batch",
            json={"urls": urls, "brand": "batch", "max_concurrent": 3, "delay_ms": 20},
        )
        assert response.status_code == 202, response.text
        batch_id = response.json()["task_id"]
        for _ in range(200):  # until the batch is under way, then kill one replica
            if len(gauge.starts) >= 8:
                break
            await asyncio.sleep(0.02)
        first.kill()
        record = await wait_terminal(system.client, batch_id, timeout_s=120)
        children = [
            t
            for t in (
                await system.client.get("/api/v1/tasks", params={"kind": "scrape", "limit": 200})
            ).json()
            if t["parent_id"] == batch_id
        ]
        points = system.knowledge.store.count("batch")
        gaps = [b - a for a, b in zip(gauge.starts, gauge.starts[1:], strict=False)]
        print(
            f"BATCH urls={count} succeeded={record['result']['pages_ok']} failed={record['result']['pages_failed']} "
            f"points={points} peak_concurrency={gauge.peak} fetches={len(gauge.starts)} min_gap_ms={min(gaps) * 1000:.0f}"
        )
        assert record["status"] == "succeeded"
        assert record["progress"] == {"done": count, "total": count}
        assert record["result"]["pages_ok"] == count
        assert len(children) == count
        assert all(c["status"] == "succeeded" for c in children)
        assert points == count  # none twice in the index
        # max_concurrent=3 across both replicas (a killed holder's slot may linger a lease).
        assert gauge.peak <= 3
        # delay_ms=20 between fetch starts: the starts spread over at least that much in all
        # (one gap can look shorter at the server, after a slower connection before it).
        assert gauge.starts[-1] - gauge.starts[0] >= 0.9 * 0.02 * (count - 1)
    finally:
        first.kill()
        second.terminate()
        await stop_system(system)


async def test_invalid_url_in_a_batch_names_its_index(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder
) -> None:
    system = await start_system(nats_server.url, prefix, tmp_path, model)
    try:
        response = await system.client.post(
            "/api/v1/scrape/batch",
            json={"urls": ["http://a.example/", "ftp://b.example/"], "brand": "x"},
        )
        assert response.status_code == 422
        assert "urls[1]" in response.json()["errors"][0]["message"]
        assert (
            await system.client.post("/api/v1/scrape/batch", json={"urls": [], "brand": "x"})
        ).status_code == 422
    finally:
        await stop_system(system)
