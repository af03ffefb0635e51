"""Signed webhooks (issue 20) against a real bus, the real services and receivers on loopback.

One system for the module (short timeouts and backoffs through the webhook settings);
receivers are real HTTP servers on 127.0.0.1 (allowed for deliveries) and 127.0.0.2 (not),
and every delivery is checked with `standardwebhooks`, the published verifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import System, start_system, stop_system
from e2e_helpers import wait_terminal
from standardwebhooks.webhooks import Webhook as Verifier
from test_auth import make_key

from helpline.cli.natsserver import NatsServer, free_port
from helpline.common import subjects
from helpline.common.embedding import Embedder
from helpline.common.messages import EventType, TaskEvent
from helpline.common.subjects import Kind
from helpline.common.webhooks import WebhookStore
from helpline.testing import bearer

pytestmark = pytest.mark.asyncio(loop_scope="module")

TIMEOUT_S = 0.5
ATTEMPTS = 3
# Above the most failures in a row the module's tests cause 127.0.0.1 (the silent receiver's).
BREAKER_FAILURES = 4


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver: what each path got, and how each path answers."""

    host: str
    port: int = 0
    got: list[Received] = field(default_factory=list)
    # path -> statuses to answer in turn (the last one repeats); "hang": never answer in time
    script: dict[str, list[Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.got if r.path == path]


@contextlib.contextmanager
def receiving(host: str) -> Iterator[Receiver]:
    receiver = Receiver(host)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.got.append(
                    Received(self.path, dict(self.headers.items()), body, time.monotonic())
                )
                answers = receiver.script.get(self.path, [200])
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
            if answer == "hang":
                time.sleep(TIMEOUT_S * 3)
                return
            status, headers = answer if isinstance(answer, tuple) else (answer, {})
            self.send_response(status)
            for name, value in {"Content-Length": "2", **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer((host, free_port(host)), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def allowed() -> Iterator[Receiver]:
    with receiving("127.0.0.1") as receiver:
        yield receiver


@pytest.fixture(scope="module")
def blocked() -> Iterator[Receiver]:
    # Loopback too (all of 127/8 is), but not on the allow list: without the guard a
    # delivery would reach it.
    with receiving("127.0.0.2") as receiver:
        yield receiver


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hooks(
    nats_server: NatsServer,
    tmp_path_factory: pytest.TempPathFactory,
    model: Embedder,
    docs_site: str,
) -> AsyncIterator[System]:
    running = await start_system(
        nats_server.url,
        f"t{uuid.uuid4().hex[:10]}",
        Path(tmp_path_factory.mktemp("webhooks")),
        model,
        webhook_allowed_hosts="127.0.0.1,127.0.0.3",
        webhook_timeout_s=TIMEOUT_S,
        webhook_max_attempts=ATTEMPTS,
        webhook_backoff_base_s=0.05,
        webhook_backoff_cap_s=2.0,
        webhook_breaker_failures=BREAKER_FAILURES,
        webhook_breaker_open_s=30.0,
        maintenance_sources_every_s=0.0,  # no sources here
    )
    try:
        yield running
    finally:
        await stop_system(running)


async def register(system: System, url: str, events: list[str], **body: Any) -> dict[str, Any]:
    response = await system.client.post(
        "/api/v1/webhooks", json={"url": url, "events": events, **body}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert response.headers["Location"].endswith(f"/api/v1/webhooks/{created['id']}")
    return created


async def eventually(check: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s: {check}")
        await asyncio.sleep(0.05)


def verified(secret: str, received: Received) -> dict[str, Any]:
    """The body as the published verifier reads it (it raises on a bad signature)."""
    payload: dict[str, Any] = Verifier(secret).verify(received.body, received.headers)
    return payload


async def deliveries(system: System, webhook_id: str) -> list[dict[str, Any]]:
    response = await system.client.get(f"/api/v1/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_deliveries_are_signed_and_filtered_by_brand(
    hooks: System, allowed: Receiver, docs_site: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    events = ["task.succeeded", "task.failed", "crawl.completed", "page.indexed"]
    acme = await register(hooks, allowed.url("/acme"), events, brand="acme")
    other = await register(hooks, allowed.url("/other"), events, brand="other")
    every = await register(hooks, allowed.url("/every"), ["crawl.completed"])
    assert acme["secret"].startswith("whsec_")
    assert acme["brand"] == "acme"
    # The secret is shown once: never in a read or a listing.
    one = (await hooks.client.get(f"/api/v1/webhooks/{acme['id']}")).json()
    listed = (await hooks.client.get("/api/v1/webhooks")).json()
    assert "secret" not in one
    assert acme["secret"] not in json.dumps(listed)
    assert {w["id"] for w in listed["items"]} >= {acme["id"], other["id"], every["id"]}

    crawl = await hooks.client.post(
        "/api/v1/crawl", json={"url": f"{docs_site}/index.html", "brand": "acme", "max_pages": 2}
    )
    assert crawl.status_code == 202, crawl.text
    crawl_id = crawl.json()["task_id"]
    record = await wait_terminal(hooks.client, crawl_id)
    assert record["status"] == "succeeded"

    def got(path: str, kind: str) -> list[dict[str, Any]]:
        return [p for r in allowed.at(path) if (p := json.loads(r.body))["type"] == kind]

    await eventually(lambda: got("/acme", "crawl.completed") and got("/every", "crawl.completed"))
    pages = await eventually(
        lambda: len(got("/acme", "page.indexed")) >= 1 and got("/acme", "page.indexed")
    )
    for received in allowed.at("/acme"):
        payload = verified(acme["secret"], received)
        assert set(payload) == {"type", "timestamp", "data"}
        assert received.headers["webhook-id"].startswith("msg_")
        assert payload["data"]["brand"] == "acme"
    for received in allowed.at("/every"):
        verified(every["secret"], received)
    # Signed with its own secret only.
    with pytest.raises(Exception, match="signature"):
        verified(other["secret"], allowed.at("/acme")[0])
    [completed] = got("/acme", "crawl.completed")
    assert completed["data"]["task_id"] == crawl_id
    assert completed["data"]["pages_ok"] == record["result"]["pages_ok"] >= 1
    assert completed["data"]["status"] == "succeeded"
    assert all(p["data"]["url"].startswith(docs_site) for p in pages)
    # task.succeeded for the crawl itself, with its record.
    crawl_done = [p for p in got("/acme", "task.succeeded") if p["data"]["task_id"] == crawl_id]
    assert len(crawl_done) == 1
    assert crawl_done[0]["data"]["kind"] == "crawl"
    # Each event once (one webhook-id each), and nothing for the other brand's webhook.
    ids = [r.headers["webhook-id"] for r in allowed.at("/acme")]
    assert len(ids) == len(set(ids))
    await asyncio.sleep(0.5)
    assert allowed.at("/other") == []
    assert await deliveries(hooks, other["id"]) == []
    listing = await deliveries(hooks, acme["id"])
    assert {d["status"] for d in listing} == {"delivered"}
    assert all(d["status_code"] == 200 and d["attempts"] == 1 for d in listing)
    assert all(d["duration_ms"] is not None and d["next_retry_at"] is None for d in listing)
    assert {d["event"] for d in listing} >= {"crawl.completed", "page.indexed", "task.succeeded"}
    # The secrets never reach a log line.
    for secret in (acme["secret"], other["secret"], every["secret"]):
        assert secret.removeprefix("whsec_") not in caplog.text


async def test_a_ping_and_the_webhook_lifecycle(hooks: System, allowed: Receiver) -> None:
    hook = await register(hooks, allowed.url("/ping"), ["task.failed"])
    sent = await hooks.client.post(f"/api/v1/webhooks/{hook['id']}/test")
    assert sent.status_code == 202, sent.text
    [received] = await eventually(lambda: allowed.at("/ping"))
    payload = verified(hook["secret"], received)
    assert payload["type"] == "ping"
    assert payload["data"]["webhook_id"] == hook["id"]
    record = await wait_terminal(hooks.client, sent.json()["task_id"])
    assert record["status"] == "succeeded"
    assert record["kind"] == "webhook"
    # A webhook's own deliveries announce nothing (no task.failed/succeeded loops).
    await asyncio.sleep(0.3)
    assert len(allowed.at("/ping")) == 1

    changed = await hooks.client.patch(
        f"/api/v1/webhooks/{hook['id']}", json={"events": ["task.succeeded", "page.indexed"]}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["events"] == ["task.succeeded", "page.indexed"]
    assert changed.json()["url"] == hook["url"]
    bad = await hooks.client.patch(f"/api/v1/webhooks/{hook['id']}", json={"events": ["ping"]})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"].startswith("events")
    assert (await hooks.client.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 204
    gone = await hooks.client.get(f"/api/v1/webhooks/{hook['id']}")
    assert gone.status_code == 404
    assert "no webhook" in gone.json()["detail"]
    assert (await hooks.client.post(f"/api/v1/webhooks/{hook['id']}/test")).status_code == 404


async def test_retries_keep_the_webhook_id_and_honour_retry_after(
    hooks: System, allowed: Receiver
) -> None:
    allowed.script["/flaky"] = [500, 500, 200]
    allowed.script["/busy"] = [(429, {"Retry-After": "1"}), 200]
    flaky = await register(hooks, allowed.url("/flaky"), ["task.succeeded"])
    busy = await register(hooks, allowed.url("/busy"), ["task.succeeded"])
    for hook in (flaky, busy):
        assert (await hooks.client.post(f"/api/v1/webhooks/{hook['id']}/test")).status_code == 202
    three = await eventually(lambda: len(allowed.at("/flaky")) == 3 and allowed.at("/flaky"))
    assert len({r.headers["webhook-id"] for r in three}) == 1
    assert len({r.body for r in three}) == 1
    for received in three:
        verified(flaky["secret"], received)
    listing = await eventually(lambda: _delivered(hooks, flaky["id"]))
    assert listing["attempts"] == 3
    assert listing["status_code"] == 200
    two = await eventually(lambda: len(allowed.at("/busy")) == 2 and allowed.at("/busy"))
    assert two[1].at - two[0].at >= 0.9  # the receiver asked for a second
    assert two[0].headers["webhook-id"] == two[1].headers["webhook-id"]


async def _delivered(system: System, webhook_id: str) -> dict[str, Any] | None:
    items = await deliveries(system, webhook_id)
    return items[0] if items and items[0]["status"] == "delivered" else None


async def test_a_receiver_that_never_answers_ends_in_the_dead_letters(
    hooks: System, allowed: Receiver
) -> None:
    allowed.script["/silent"] = ["hang"]
    hook = await register(hooks, allowed.url("/silent"), ["task.succeeded"])
    sent = await hooks.client.post(f"/api/v1/webhooks/{hook['id']}/test")
    delivery_id = sent.json()["task_id"]
    record = await wait_terminal(hooks.client, delivery_id, timeout_s=30)
    assert record["status"] == "failed"
    assert record["attempts"] == ATTEMPTS
    assert "did not answer" in record["error"]["message"]
    tried = allowed.at("/silent")
    assert len(tried) == ATTEMPTS
    assert len({r.headers["webhook-id"] for r in tried}) == 1
    letters = (await hooks.client.get("/api/v1/dlq")).json()
    [letter] = [d for d in letters if d["task_id"] == delivery_id]
    assert letter["kind"] == "webhook"
    assert letter["attempts"] == ATTEMPTS
    assert hook["secret"].removeprefix("whsec_") not in json.dumps(letter)
    [entry] = await deliveries(hooks, hook["id"])
    assert entry["status"] == "dead_lettered"
    assert entry["attempts"] == ATTEMPTS
    assert entry["next_retry_at"] is None
    assert "did not answer" in entry["error"]


async def test_blocked_receivers_are_refused_at_registration_and_at_delivery(
    hooks: System, allowed: Receiver, blocked: Receiver
) -> None:
    for url in (blocked.url("/hook"), "http://10.0.0.1/hook", "http://169.254.169.254/latest"):
        refused = await hooks.client.post(
            "/api/v1/webhooks", json={"url": url, "events": ["task.failed"]}
        )
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["errors"]
        assert error["field"] == "url"
        assert "blocked address" in error["message"]
    hook = await register(hooks, allowed.url("/moved"), ["task.failed"])
    moved = await hooks.client.patch(
        f"/api/v1/webhooks/{hook['id']}", json={"url": blocked.url("/hook")}
    )
    assert moved.status_code == 422
    assert moved.json()["errors"][0]["field"] == "url"
    # The receiver's address changes after registration (a name re-resolving to a private
    # address): the delivery checks again and refuses, without a retry.
    store = WebhookStore(hooks.host.bus.buckets)
    await store.change(hook["id"], lambda w: w.model_copy(update={"url": blocked.url("/hook")}))
    await asyncio.sleep(0.3)  # the deliverer follows the bucket: the change arrives in ms
    sent = await hooks.client.post(f"/api/v1/webhooks/{hook['id']}/test")
    record = await wait_terminal(hooks.client, sent.json()["task_id"])
    assert record["status"] == "failed"
    assert record["attempts"] == 1
    assert "blocked address" in record["error"]["message"]
    [entry] = await deliveries(hooks, hook["id"])
    assert entry["status"] == "failed"
    assert "blocked address" in entry["error"]
    assert blocked.got == []
    assert allowed.at("/moved") == []


async def test_redirects_are_not_followed(hooks: System, allowed: Receiver) -> None:
    allowed.script["/redirect"] = [(307, {"Location": allowed.url("/target")})]
    hook = await register(hooks, allowed.url("/redirect"), ["task.failed"])
    sent = await hooks.client.post(f"/api/v1/webhooks/{hook['id']}/test")
    record = await wait_terminal(hooks.client, sent.json()["task_id"])
    assert record["status"] == "failed"
    assert record["attempts"] == 1
    assert "redirects are not followed" in record["error"]["message"]
    assert len(allowed.at("/redirect")) == 1
    assert allowed.at("/target") == []


async def test_keys_limited_to_brands_register_only_their_brands(hooks: System) -> None:
    key = await make_key(hooks.client, scopes=["submit"], brands=["acme"])
    mine = bearer(key)
    url = "http://127.0.0.1:9/hook"
    body = {"url": url, "events": ["page.indexed"]}
    refused = await hooks.client.post("/api/v1/webhooks", json=body, headers=mine)
    assert refused.status_code == 403
    assert "brand" in refused.json()["detail"]
    other = await hooks.client.post(
        "/api/v1/webhooks", json={**body, "brand": "other"}, headers=mine
    )
    assert other.status_code == 403
    own = await hooks.client.post("/api/v1/webhooks", json={**body, "brand": "acme"}, headers=mine)
    assert own.status_code == 201, own.text
    admins = await register(hooks, url, ["page.indexed"], brand="other")
    listed = (await hooks.client.get("/api/v1/webhooks", headers=mine)).json()["items"]
    assert {w["brand"] for w in listed} == {"acme"}
    hidden = await hooks.client.get(f"/api/v1/webhooks/{admins['id']}", headers=mine)
    assert hidden.status_code == 404
    moved = await hooks.client.patch(
        f"/api/v1/webhooks/{own.json()['id']}", json={"brand": None}, headers=mine
    )
    assert moved.status_code == 403
    query_only = bearer(await make_key(hooks.client, scopes=["query"]))
    assert (await hooks.client.get("/api/v1/webhooks", headers=query_only)).status_code == 403


async def test_an_outcome_applied_twice_is_delivered_once(hooks: System, allowed: Receiver) -> None:
    hook = await register(hooks, allowed.url("/once"), ["task.succeeded"])
    sent = await hooks.client.post("/api/v1/maintenance/ping", json={})
    task_id = sent.json()["task_id"]
    await wait_terminal(hooks.client, task_id)
    [first] = await eventually(lambda: allowed.at("/once"))
    payload = verified(hook["secret"], first)
    assert payload["data"]["task_id"] == task_id
    assert payload["data"]["kind"] == "maintenance"
    assert payload["data"]["status"] == "succeeded"
    # The same outcome reported again (a redelivered event): applied (a no-op), announced
    # again, under the same delivery id, so nothing more goes out.
    bus = hooks.host.bus
    again = TaskEvent(task_id=task_id, kind=Kind.MAINTENANCE, type=EventType.SUCCEEDED, attempt=1)
    await bus.emit(again)

    async def tracker_idle() -> bool:
        info = await bus.js.consumer_info(
            subjects.events_stream(bus.layout.prefix), subjects.TRACKER_CONSUMER
        )
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(tracker_idle)
    await asyncio.sleep(0.5)
    assert len(allowed.at("/once")) == 1
    assert len(await deliveries(hooks, hook["id"])) == 1


async def test_a_failing_receiver_opens_its_hosts_breaker_only(
    hooks: System, allowed: Receiver
) -> None:
    with receiving("127.0.0.3") as down:
        down.script["/down"] = [503]
        hook = await register(hooks, down.url("/down"), ["task.failed"])
        for _ in range(2):
            sent = await hooks.client.post(f"/api/v1/webhooks/{hook['id']}/test")
            assert sent.status_code == 202
        # Four failures in a row open 127.0.0.3's breaker: then the deliveries wait without
        # spending attempts, and nothing more reaches the receiver.
        await eventually(lambda: len(down.at("/down")) >= BREAKER_FAILURES)

        async def waiting() -> list[dict[str, Any]]:
            items = await deliveries(hooks, hook["id"])
            return [d for d in items if "circuit open" in (d["error"] or "")]

        held = await eventually(waiting)
        assert "host:webhook:127.0.0.3" in held[0]["error"]
        assert held[0]["status"] == "retrying"
        assert held[0]["next_retry_at"] is not None
        await asyncio.sleep(0.5)
        assert len(down.at("/down")) == BREAKER_FAILURES
    # Another host's deliveries go on.
    fine = await register(hooks, allowed.url("/after"), ["task.failed"])
    await hooks.client.post(f"/api/v1/webhooks/{fine['id']}/test")
    [received] = await eventually(lambda: allowed.at("/after"))
    verified(fine["secret"], received)
