"""SIGTERM a busy scraper: it finishes or hands back its work and exits 0 within the grace."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest
from e2e_helpers import eventually
from faults.support import gateway, layout, service, settle, start_all, submit_all

from helpline.cli.natsserver import NatsServer
from helpline.testing import Route, serve_site

pytestmark = pytest.mark.slow

PAGES = 12
ANSWER_AFTER_S = 1.5
GRACE_S = 5.0
EXIT_MARGIN_S = 3.0
CONCURRENCY = 4


class SlowPages:
    """Pages that answer after a while, counting the requests being answered right now."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.served = 0

    def route(self, n: int) -> Route:
        def answer(request: SimpleHTTPRequestHandler) -> None:
            with self.lock:
                self.in_flight += 1
            try:
                time.sleep(ANSWER_AFTER_S)
                body = (
                    f"<html><head><title>Slow page {n}</title></head><body><main>"
                    f"<p>Slow page number {n} explains how the model {n} gateway restarts "
                    f"its radio after a firmware update of series {n * 7}.</p>"
                    f"</main></body></html>"
                ).encode()
                with contextlib.suppress(OSError):
                    request.send_response(200)
                    request.send_header("Content-Type", "text/html; charset=utf-8")
                    request.send_header("Content-Length", str(len(body)))
                    request.end_headers()
                    request.wfile.write(body)
            finally:
                with self.lock:
                    self.in_flight -= 1
                    self.served += 1

        return answer


@pytest.fixture
def slow_site(tmp_path: Path) -> Iterator[tuple[str, SlowPages]]:
    pages = SlowPages()
    root = tmp_path / "site"
    root.mkdir()
    routes = {f"/slow/{n}.html": pages.route(n) for n in range(PAGES)}
    with serve_site(root, routes=routes) as url:
        yield url, pages


async def test_sigterm_is_graceful(
    nats_server: NatsServer, prefix: str, tmp_path: Path, slow_site: tuple[str, SlowPages]
) -> None:
    started = time.monotonic()
    url, pages = slow_site
    settings = layout(shutdown_grace_s=GRACE_S, scraper_concurrency=CONCURRENCY)

    first = service("scraper", nats_server.url, tmp_path / "scraper-a", prefix, settings)
    second = service("scraper", nats_server.url, tmp_path / "scraper-b", prefix, settings)
    embedder = service("embedder", nats_server.url, tmp_path / "embedder", prefix, settings)
    try:
        async with gateway(nats_server.url, prefix, tmp_path, settings) as gw:
            await start_all(first, embedder)
            bodies = [{"url": f"{url}/slow/{n}.html", "brand": "b"} for n in range(PAGES)]
            ids = await submit_all(gw.client, "/api/v1/scrape", bodies)

            async def busy() -> bool:
                return pages.in_flight >= CONCURRENCY

            assert await eventually(busy, timeout_s=20, every_s=0.05), "the scraper never got busy"
            await asyncio.sleep(ANSWER_AFTER_S / 3)  # mid-fetch
            in_flight = pages.in_flight
            stopping = time.monotonic()
            code = await asyncio.to_thread(first.terminate, GRACE_S + 30)
            exit_s = time.monotonic() - stopping
            served_by_first = pages.served

            await start_all(second)
            tally = await settle(gw.client, ids, timeout_s=40)
    finally:
        for proc in (first, second, embedder):
            proc.terminate()
    print(
        f"FAULT sigterm: tasks={tally.tasks} in_flight_at_sigterm={in_flight} exit_code={code} "
        f"exit_s={exit_s:.1f} served_before_exit={served_by_first} "
        f"succeeded={tally.succeeded} lost={tally.lost} stuck={tally.stuck} "
        f"failed={tally.failed} seconds={time.monotonic() - started:.1f}"
    )
    assert code == 0
    assert exit_s <= GRACE_S + EXIT_MARGIN_S
    assert tally.succeeded == PAGES, tally.unfinished()
