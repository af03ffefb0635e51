"""Retries that retry, dead letters that keep what failed, poison that does not block the queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest
from conftest import System, start_system, stop_system
from e2e_helpers import eventually, wait_terminal

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.common.subjects import Kind, Priority
from helpline.testing import serve_site

PAGE = b"<html><head><title>Flaky</title></head><body><main><p>The flaky page finally answered with the warranty terms.</p></main></body></html>"


class Flaky:
    """A route that answers 503 `failures` times, then 200; records when each request came."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.times: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, request: SimpleHTTPRequestHandler) -> None:
        with self._lock:
            self.times.append(time.monotonic())
            fail = len(self.times) <= self.failures
        status, body = (503, b"busy") if fail else (200, PAGE)
        request.send_response(status)
        request.send_header("Content-Type", "text/html")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


@pytest.fixture
def flaky_twice(tmp_path: Path) -> Iterator[tuple[str, Flaky]]:
    route = Flaky(failures=2)
    with serve_site(tmp_path, routes={"/flaky.html": route}) as url:
        yield url, route


@pytest.fixture
def always_down(tmp_path: Path) -> Iterator[tuple[str, Flaky]]:
    route = Flaky(failures=10**6)
    with serve_site(tmp_path, routes={"/down.html": route}) as url:
        yield url, route


@pytest.fixture
async def slow_backoff_system(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder
) -> Iterator[System]:
    """Backoff from 0.2 s so that growing delays are measurable; 4 attempts."""
    running = await start_system(
        nats_server.url,
        prefix,
        tmp_path,
        model,
        backoff_base_s=0.2,
        backoff_cap_s=2.0,
        max_deliver=4,
    )
    try:
        yield running
    finally:
        await stop_system(running)


async def test_fails_twice_then_succeeds_on_attempt_three_with_growing_delays(
    slow_backoff_system: System, flaky_twice: tuple[str, Flaky]
) -> None:
    url, route = flaky_twice
    client = slow_backoff_system.client
    response = await client.post(
        "/api/v1/scrape", json={"url": f"{url}/flaky.html", "brand": "acme"}
    )
    record = await wait_terminal(client, response.json()["task_id"])
    assert record["status"] == "succeeded", record
    assert record["attempts"] == 3
    assert len(route.times) == 3
    first_gap, second_gap = route.times[1] - route.times[0], route.times[2] - route.times[1]
    print(f"FAULT fails-twice: attempts=3 gaps={first_gap:.3f}s,{second_gap:.3f}s")
    # Equal jitter: attempt 1 waits 0.1-0.2 s, attempt 2 waits 0.2-0.4 s.
    assert 0.1 <= first_gap < second_gap


async def test_last_attempt_is_dead_lettered_and_replayable(
    system: System, always_down: tuple[str, Flaky]
) -> None:
    url, _route = always_down
    client = system.client
    failing = await client.post("/api/v1/scrape", json={"url": f"{url}/down.html", "brand": "acme"})
    task_id = failing.json()["task_id"]
    # Other work keeps flowing meanwhile.
    ping = await client.post("/api/v1/maintenance/ping")
    assert (await wait_terminal(client, ping.json()["task_id"]))["status"] == "succeeded"

    record = await wait_terminal(client, task_id)
    assert record["status"] == "failed"
    assert record["attempts"] == 2  # the test system's max_deliver
    assert record["error"]["message"].startswith("gave up after 2 attempts: ")
    assert "503" in record["error"]["message"]

    letters = (await client.get("/api/v1/dlq")).json()
    assert [letter["task_id"] for letter in letters] == [task_id]
    letter = letters[0]
    assert letter["kind"] == "scrape"
    assert letter["attempts"] == 2
    assert letter["task"]["url"] == f"{url}/down.html"
    assert "503" in letter["error"]["message"]
    print(f"FAULT dead-letter: attempts={letter['attempts']} dead_lettered=1")

    replay = await client.post(f"/api/v1/dlq/{task_id}/replay", json={})
    assert replay.status_code == 202, replay.text
    replayed = replay.json()
    assert replayed["replay_of"] == task_id
    assert replayed["task_id"] != task_id
    new_record = (await client.get(f"/api/v1/tasks/{replayed['task_id']}")).json()
    assert new_record["priority"] == "low"
    assert (await client.get("/api/v1/dlq")).json() == []
    assert (await client.post(f"/api/v1/dlq/{task_id}/replay")).status_code == 404


async def test_poison_message_is_dead_lettered_and_others_keep_flowing(system: System) -> None:
    bus = system.host.bus
    subject = bus.layout.task_subject(Kind.SCRAPE, Priority.NORMAL)
    poison = b'{"task_id": "poison1", "url": 42}'
    await bus.js.publish(subject, poison, stream=bus.layout.task_stream(Kind.SCRAPE))
    ping = await system.client.post("/api/v1/maintenance/ping")
    assert (await wait_terminal(system.client, ping.json()["task_id"]))["status"] == "succeeded"

    record = await wait_terminal(system.client, "poison1")
    assert record["status"] == "failed"
    assert record["error"]["type"] == "InvalidMessage"
    assert "brand" in record["error"]["message"]  # names what is wrong
    letters = (await system.client.get("/api/v1/dlq", params={"kind": "scrape"})).json()
    assert [entry["task_id"] for entry in letters] == ["poison1"]
    replay = await system.client.post("/api/v1/dlq/poison1/replay")
    assert replay.status_code == 409

    # Nothing left in the queue: the poison was not redelivered forever (its settling, sent
    # after its event, is not awaited).
    async def queue_empty() -> bool:
        state = (await bus.js.stream_info(bus.layout.task_stream(Kind.SCRAPE))).state
        return state.messages == 0

    assert await eventually(queue_empty, timeout_s=5, every_s=0.05)
    print("FAULT poison: dead_lettered=1 stuck=0")
