"""Work that hangs is stopped: a task past its kind's longest run time (`HELPLINE_MAX_RUN_S`)
is cancelled, retried, and dead-lettered on its last attempt with the reason, while other
work keeps flowing. A real scraper, bus and gateway; a page that never answers in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import start_system, stop_system
from e2e_helpers import wait_terminal

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.common.errors import RanTooLong
from helpline.common.worker import _bounded
from helpline.testing import serve_site, slow_route


@pytest.fixture
def hanging_page(tmp_path: Path) -> Iterator[str]:
    with serve_site(tmp_path, routes={"/hangs.html": slow_route(4.0)}) as url:
        yield url


async def test_a_hung_scrape_is_stopped_retried_and_dead_lettered_with_the_reason(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder, hanging_page: str
) -> None:
    system = await start_system(
        nats_server.url,
        prefix,
        tmp_path,
        model,
        # The fetch itself would wait 30 s: only the run-time limit stops it.
        scraper_timeout_s=30.0,
        max_run_s={"scrape": 0.5},
        max_deliver=2,
    )
    client = system.client
    try:
        started = time.monotonic()
        hung = await client.post(
            "/api/v1/scrape", json={"url": f"{hanging_page}/hangs.html", "brand": "acme"}
        )
        assert hung.status_code == 202, hung.text
        task_id = hung.json()["task_id"]
        # Meanwhile other work is done.
        ping = await client.post("/api/v1/maintenance/ping")
        assert (await wait_terminal(client, ping.json()["task_id"]))["status"] == "succeeded"

        record = await wait_terminal(client, task_id, timeout_s=30)
        took = time.monotonic() - started
        assert record["status"] == "failed", record
        assert record["attempts"] == 2
        assert record["error"]["type"] == "RanTooLong"
        assert record["error"]["message"] == "gave up after 2 attempts: ran longer than 0.5 s"
        # Two half-second attempts and a short backoff, not two 4-second fetches.
        assert took < 4.0, took
        letters = (await client.get("/api/v1/dlq")).json()
        assert [letter["task_id"] for letter in letters] == [task_id]
        assert "ran longer than 0.5 s" in letters[0]["error"]["message"]
    finally:
        await stop_system(system)


async def test_a_handlers_own_timeout_is_not_taken_for_the_run_limit() -> None:
    async def times_out(_ctx: object) -> dict[str, object]:
        await asyncio.wait_for(asyncio.sleep(1), timeout=0.01)
        return {}

    async def hangs(_ctx: object) -> dict[str, object]:
        await asyncio.sleep(10)
        return {}

    async def quick(_ctx: object) -> dict[str, object]:
        return {"ok": True}

    with pytest.raises(TimeoutError) as own:
        await _bounded(times_out, None, 5.0)  # type: ignore[arg-type]
    assert not isinstance(own.value, RanTooLong)
    with pytest.raises(RanTooLong, match=r"ran longer than 0\.05 s"):
        await _bounded(hangs, None, 0.05)  # type: ignore[arg-type]
    assert await _bounded(quick, None, 0.05) == {"ok": True}  # type: ignore[arg-type]
