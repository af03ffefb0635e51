"""Long work tells the bus it is alive, so it is not redelivered while it runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import start_system, stop_system
from e2e_helpers import wait_terminal

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.testing import serve_site, slow_route


class Counted:
    """A slow route that counts its requests."""

    def __init__(self, seconds: float) -> None:
        self.hits = 0
        self._slow = slow_route(seconds)

    def __call__(self, request: object) -> None:
        self.hits += 1
        self._slow(request)  # type: ignore[arg-type]


@pytest.fixture
def slow_page(tmp_path: Path) -> Iterator[tuple[str, Counted]]:
    route = Counted(seconds=2.5)
    with serve_site(tmp_path, routes={"/slow.html": route}) as url:
        yield url, route


async def test_task_longer_than_ack_wait_is_not_redelivered(
    nats_server: NatsServer,
    prefix: str,
    tmp_path: Path,
    model: Embedder,
    slow_page: tuple[str, Counted],
) -> None:
    url, route = slow_page
    # ack_wait of 1 s, a page that takes 2.5 s: without in-progress signals the bus would
    # hand the message to another consumer at least twice.
    system = await start_system(
        nats_server.url, prefix, tmp_path, model, ack_wait_s=1.0, scraper_timeout_s=6.0
    )
    try:
        response = await system.client.post(
            "/api/v1/scrape", json={"url": f"{url}/slow.html", "brand": "acme"}
        )
        record = await wait_terminal(system.client, response.json()["task_id"])
        print(
            f"FAULT long-work: ack_wait=1s work=2.5s fetches={route.hits} attempts={record['attempts']}"
        )
        assert record["status"] == "succeeded", record
        assert record["attempts"] == 1
        assert route.hits == 1
    finally:
        await stop_system(system)
