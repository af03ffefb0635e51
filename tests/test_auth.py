"""API keys on a real gateway over a real NATS: every route guarded, scopes, brands, key
management, revocation and rate limits shared by two replicas, bounded requests."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import System, settings_for
from e2e_helpers import eventually, wait_terminal

from helpline.cli.natsserver import NatsServer, free_port
from helpline.gateway.app import GatewayComponent
from helpline.gateway.keys import new_key
from helpline.gateway.settings import GatewaySettings
from helpline.testing import TEST_ADMIN_KEY, bearer

#: The scope each route of the API needs. A route added without a row here fails
#: `test_every_route_is_guarded`: decide its scope, then add it.
SCOPES: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/crawl"): "submit",
    ("POST", "/api/v1/scrape"): "submit",
    ("POST", "/api/v1/scrape/batch"): "submit",
    ("POST", "/api/v1/embed"): "submit",
    ("POST", "/api/v1/query"): "query",
    ("GET", "/api/v1/tasks/{task_id}"): "submit",
    ("DELETE", "/api/v1/tasks/{task_id}"): "submit",
    ("GET", "/api/v1/tasks"): "submit",
    ("POST", "/api/v1/maintenance/ping"): "admin",
    ("GET", "/api/v1/cache/stats"): "admin",
    ("POST", "/api/v1/cache/clear"): "admin",
    ("GET", "/api/v1/dlq"): "admin",
    ("POST", "/api/v1/dlq/{task_id}/replay"): "admin",
    ("GET", "/api/v1/queues"): "admin",
    ("GET", "/api/v1/workers"): "admin",
    ("GET", "/api/v1/system/status"): "admin",
    ("GET", "/api/v1/breakers"): "admin",
    ("GET", "/api/v1/metrics/stats"): "admin",
    ("GET", "/api/v1/metrics/slow-requests"): "admin",
    ("GET", "/api/v1/metrics/errors"): "admin",
    ("GET", "/api/v1/traces/{trace_id}"): "admin",
    ("POST", "/api/v1/keys"): "admin",
    ("GET", "/api/v1/keys"): "admin",
    ("POST", "/api/v1/admin/backup"): "admin",
    ("DELETE", "/api/v1/keys/{key_id}"): "admin",
    ("POST", "/api/v1/sources"): "submit",
    ("GET", "/api/v1/sources"): "query",
    ("GET", "/api/v1/sources/{source_id}"): "query",
    ("PATCH", "/api/v1/sources/{source_id}"): "submit",
    ("DELETE", "/api/v1/sources/{source_id}"): "submit",
    ("GET", "/api/v1/documents"): "query",
    ("GET", "/api/v1/documents/by-url"): "query",
    ("GET", "/api/v1/documents/{document_id}"): "query",
    ("DELETE", "/api/v1/documents/{document_id}"): "submit",
    ("GET", "/api/v1/brands"): "query",
    ("DELETE", "/api/v1/brands/{brand}"): "admin",
    ("POST", "/api/v1/webhooks"): "submit",
    ("GET", "/api/v1/webhooks"): "submit",
    ("GET", "/api/v1/webhooks/{webhook_id}"): "submit",
    ("PATCH", "/api/v1/webhooks/{webhook_id}"): "submit",
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): "submit",
    ("POST", "/api/v1/webhooks/{webhook_id}/test"): "submit",
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): "submit",
}
#: Routes whose body names a brand, with a body that is valid but for another brand's key.
BRANDED: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/crawl"): {"url": "http://127.0.0.1:9/", "brand": "globex"},
    ("POST", "/api/v1/scrape"): {"url": "http://127.0.0.1:9/", "brand": "globex"},
    ("POST", "/api/v1/scrape/batch"): {"urls": ["http://127.0.0.1:9/"], "brand": "globex"},
    ("POST", "/api/v1/embed"): {"documents": [{"text": "x", "brand": "globex"}]},
    ("POST", "/api/v1/query"): {"question": "what?", "brand": "globex"},
    ("POST", "/api/v1/webhooks"): {
        "url": "http://127.0.0.1:9/",
        "events": ["task.failed"],
        "brand": "globex",
    },
}


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


#: A made key (`hl_<id>_<secret>`) or the tests' admin key (`hl_<secret>`).
KEY_SHAPE = re.compile(r"hl_[0-9a-f]{16}_[A-Za-z0-9_\-]{43}|hl_[A-Za-z0-9_\-]{43}")


async def make_key(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/api/v1/keys", json={"name": "test", **body})
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def _call(client: httpx.AsyncClient, method: str, path: str, key: str | None, **kw: Any) -> Any:
    # No key: the client's own (the admin key) replaced by nothing.
    headers = bearer(key) if key is not None else {"Authorization": ""}
    return client.request(method, path.replace("{", "x").replace("}", ""), headers=headers, **kw)


async def test_every_route_is_guarded(system: System) -> None:
    """Each route of the document, with no key, an unknown key, the wrong scope, the right scope."""
    document = (await system.client.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    operations = {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        if path.startswith("/api/v1")
        for method, operation in item.items()
    }
    unknown = set(operations) - set(SCOPES)
    assert not unknown, f"routes with no scope decided in SCOPES: {sorted(unknown)}"
    keys = {scope: await make_key(system.client, scopes=[scope]) for scope in ("query", "submit")}
    unlisted = set(SCOPES) - set(operations)
    for (method, path), scope in SCOPES.items():
        if (method, path) in unlisted:
            continue  # a route of an issue not built yet
        operation = operations[(method, path)]
        assert operation.get("security") == [{"apiKey": []}], (method, path)
        for status in ("401", "403", "429"):
            assert status in operation["responses"], (method, path, status)
        where = f"{method} {path}"
        for key in (None, "hl_" + "x" * 43, new_key()):
            response = await _call(system.client, method, path, key)
            assert response.status_code == 401, (where, response.text)
            assert response.headers["www-authenticate"] == "Bearer", where
            assert response.json()["detail"], where
        wrong = keys["submit"] if scope == "query" else keys["query"]
        response = await _call(system.client, method, path, wrong)
        assert response.status_code == 403, (where, response.text)
        assert scope in response.json()["detail"]
        right = TEST_ADMIN_KEY if scope == "admin" else keys[scope]
        response = await _call(system.client, method, path, right, json={})
        assert response.status_code not in (401, 403), (where, response.text)


async def test_a_brand_limited_key_sees_only_its_brands(system: System, docs_site: str) -> None:
    admin = system.client
    for page, brand in (("config/firewall.html", "acme"), ("troubleshooting/reset.html", "globex")):
        response = await admin.post(
            "/api/v1/scrape", json={"url": f"{docs_site}/{page}", "brand": brand}
        )
        await wait_terminal(admin, response.json()["task_id"])
    globex_task = (await admin.get("/api/v1/tasks", params={"brand": "globex"})).json()[0]
    acme = await make_key(admin, scopes=["query", "submit"], brands=["acme"])
    acme_admin = await make_key(admin, scopes=["admin"], brands=["acme"])

    # Questions: without a brand, only acme's pages answer; globex's is refused.
    for question in ("How long do I hold the reset button?", "What is FW-409?"):
        answer = await admin.post(
            "/api/v1/query", json={"question": question, "cache": False}, headers=bearer(acme)
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["sources"], question
        assert all("reset.html" not in s["url"] for s in answer.json()["sources"]), question
    # A key of several brands searches all of them, and only them (the store filters by any).
    several = await make_key(admin, scopes=["query"], brands=["acme", "initech"])
    answer = await admin.post(
        "/api/v1/query",
        json={"question": "How long do I hold the reset button?"},
        headers=bearer(several),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["sources"]
    assert all("reset.html" not in s["url"] for s in answer.json()["sources"])
    everyone = await admin.post(
        "/api/v1/query", json={"question": "How long do I hold the reset button?", "cache": False}
    )
    assert any("reset.html" in s["url"] for s in everyone.json()["sources"])
    refused = await admin.post(
        "/api/v1/query", json={"question": "reset?", "brand": "globex"}, headers=bearer(acme)
    )
    assert refused.status_code == 403
    assert "globex" in refused.json()["detail"]

    # Tasks: globex's are not listed and not found; submitting for globex is refused.
    listed = (await admin.get("/api/v1/tasks", headers=bearer(acme))).json()
    assert listed
    assert {t["brand"] for t in listed} == {"acme"}
    hidden = await admin.get(f"/api/v1/tasks/{globex_task['task_id']}", headers=bearer(acme))
    assert hidden.status_code == 404
    for (method, path), body in BRANDED.items():
        response = await _call(admin, method, path, acme, json=body)
        assert response.status_code == 403, (path, response.text)

    # Dead letters: a failed globex scrape reaches the admin's list, not acme's admin.
    failing = await admin.post(
        "/api/v1/scrape", json={"url": "http://127.0.0.1:9/gone.html", "brand": "globex"}
    )
    await wait_terminal(admin, failing.json()["task_id"])
    dead = failing.json()["task_id"]

    async def letter_listed() -> bool:
        letters = (await admin.get("/api/v1/dlq")).json()
        return any(letter["task_id"] == dead for letter in letters)

    assert await eventually(letter_listed, 10.0)
    letters = (await admin.get("/api/v1/dlq", headers=bearer(acme_admin))).json()
    assert all(letter["task_id"] != dead for letter in letters)
    replay = await admin.post(f"/api/v1/dlq/{dead}/replay", headers=bearer(acme_admin))
    assert replay.status_code == 404
    # Keys: a brand-limited admin cannot make a key for every brand, or for another brand.
    for brands in (None, ["globex"]):
        response = await admin.post(
            "/api/v1/keys",
            json={"name": "x", "scopes": ["query"], "brands": brands},
            headers=bearer(acme_admin),
        )
        assert response.status_code == 403, brands
    # Operations over every brand need an unlimited key.
    assert (await admin.post("/api/v1/cache/clear", headers=bearer(acme_admin))).status_code == 403


@pytest.fixture
async def two_replicas(
    system: System, nats_server: NatsServer, prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """The system's gateway and a second replica on the same bus."""
    other = GatewayComponent(settings_for(GatewaySettings, nats_server.url, prefix, tmp_path))  # type: ignore[arg-type]
    await other.start(system.host.bus)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=other.app),
        base_url="http://b",
        headers=bearer(TEST_ADMIN_KEY),
    )
    try:
        yield system.client, client
    finally:
        await client.aclose()
        await other.stop()


async def test_keys_are_made_listed_and_revoked_on_every_replica(
    two_replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a, b = two_replicas
    made = await a.post(
        "/api/v1/keys",
        json={"name": "widget", "scopes": ["query"], "brands": ["acme"], "rate_per_minute": 100},
    )
    assert made.status_code == 201
    key = made.json()["key"]
    assert re.fullmatch(r"hl_[0-9a-f]{16}_[A-Za-z0-9_\-]{43}", key)
    key_id = made.json()["id"]

    async def works_on_b() -> bool:
        response = await b.get("/api/v1/tasks", headers=bearer(key))
        return response.status_code == 403  # known (query scope only), not 401

    assert await eventually(works_on_b, 1.0, every_s=0.02)
    listed = (await b.get("/api/v1/keys")).json()
    mine = next(k for k in listed if k["id"] == key_id)
    assert mine["name"] == "widget"
    assert mine["brands"] == ["acme"]
    assert mine["scopes"] == ["query"]
    assert "key" not in mine
    assert "hash" not in mine
    assert key not in (await b.get("/api/v1/keys")).text
    # Used once on b: `last_used_at` is set.
    await b.post("/api/v1/query", json={"question": "x?", "brand": "acme"}, headers=bearer(key))
    listed = (await a.get("/api/v1/keys")).json()
    assert next(k for k in listed if k["id"] == key_id)["last_used_at"] is not None

    revoked_at = time.monotonic()
    assert (await a.delete(f"/api/v1/keys/{key_id}")).status_code == 204

    async def refused_on_both() -> bool:
        statuses = [(await c.get("/api/v1/tasks", headers=bearer(key))).status_code for c in (a, b)]
        return statuses == [401, 401]

    assert await eventually(refused_on_both, 1.0, every_s=0.02)
    assert time.monotonic() - revoked_at < 1.0
    assert (await a.delete(f"/api/v1/keys/{key_id}")).status_code == 404
    # The bootstrap key is changed through HELPLINE_ADMIN_KEY, not revoked here.
    assert (await a.delete("/api/v1/keys/admin")).status_code == 409
    # Bad input names the field.
    bad = await a.post("/api/v1/keys", json={"name": "x", "scopes": ["root"]})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"].startswith("scopes")
    # No key reached a log line.
    assert not KEY_SHAPE.search(caplog.text)
    assert TEST_ADMIN_KEY not in caplog.text


async def test_two_replicas_share_one_rate_limit(
    two_replicas: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = two_replicas
    key = await make_key(a, scopes=["submit"], rate_per_minute=6)
    statuses = []
    for n in range(8):
        response = await (a if n % 2 else b).get("/api/v1/tasks", headers=bearer(key))
        statuses.append(response.status_code)
        if response.status_code == 200:
            assert response.headers["ratelimit-limit"] == "6"
            assert int(response.headers["ratelimit-remaining"]) == 5 - n
    assert statuses == [200] * 6 + [429] * 2
    assert 1 <= int(response.headers["retry-after"]) <= 10  # one request back every 10 s
    assert response.headers["ratelimit-remaining"] == "0"
    assert int(response.headers["ratelimit-reset"]) > 0
    assert "rate limit" in response.json()["detail"]
    # Another key's allowance is its own.
    other = await make_key(a, scopes=["submit"], rate_per_minute=6)
    assert (await b.get("/api/v1/tasks", headers=bearer(other))).status_code == 200


@pytest.fixture
async def served(system: System) -> AsyncIterator[int]:
    """The system's gateway over real HTTP (uvicorn in this event loop); yields its port."""
    gateway = next(c for c in system.host.components if isinstance(c, GatewayComponent))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(gateway.app, host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def _send_until_answered(
    port: int, head: bytes, chunks: int, chunk: bytes
) -> tuple[int, bytes]:
    """Send `head`, then body chunks until the server answers; (body bytes sent, answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    writer.write(head)
    answer = asyncio.create_task(reader.read(4096))
    try:
        for _ in range(chunks):
            if answer.done():
                break
            writer.write(chunk)
            sent += len(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 5)
            except (ConnectionError, TimeoutError):
                break
        return sent, await asyncio.wait_for(answer, 10)
    finally:
        writer.close()


async def test_a_body_over_the_limit_is_refused_before_it_is_read(served: int) -> None:
    twenty_mb = 20 * 1024 * 1024
    piece = b"x" * 65536
    head = (
        "POST /api/v1/embed HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TEST_ADMIN_KEY}\r\nContent-Length: {twenty_mb}\r\n\r\n"
    ).encode()
    sent, answer = await _send_until_answered(served, head, twenty_mb // len(piece), piece)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"over the limit" in answer
    assert sent < twenty_mb // 2, sent  # answered long before the body was sent
    # Chunked: counted as it arrives, refused at the limit (10 MB), not at its end (20 MB).
    head = head.replace(f"Content-Length: {twenty_mb}".encode(), b"Transfer-Encoding: chunked")
    framed = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent, answer = await _send_until_answered(served, head, twenty_mb // len(piece), framed)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 15 * 1024 * 1024, sent


async def test_a_flood_of_questions_gets_429s_and_memory_stays_bounded(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Any
) -> None:
    from conftest import start_system, stop_system

    system = await start_system(
        nats_server.url, prefix, tmp_path, model, max_inflight_queries=4, query_timeout_s=2.0
    )
    try:
        before = rss_bytes()
        for _ in range(3):
            answers = await asyncio.gather(
                *(
                    system.client.post(
                        "/api/v1/query", json={"question": f"question {n}?", "cache": False}
                    )
                    for n in range(200)
                )
            )
            statuses = {r.status_code for r in answers}
            assert statuses <= {200, 429}, statuses
            busy = [r for r in answers if r.status_code == 429]
            assert busy
            assert busy[0].headers["retry-after"] == "1"
            assert "at once" in busy[0].json()["detail"]
        grown_mb = (rss_bytes() - before) / 2**20
        assert grown_mb < 100, grown_mb
    finally:
        await stop_system(system)


async def test_concurrent_requests_of_one_key_spend_its_allowance_exactly(
    two_replicas: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    """Thirty requests at once, on two replicas, of a key allowed ten: ten pass, no more, no
    fewer (each replica settles its waiting requests with one write at a time)."""
    a, b = two_replicas
    key = await make_key(a, scopes=["submit"], rate_per_minute=10)
    responses = await asyncio.gather(
        *((a, b)[n % 2].get("/api/v1/tasks", headers=bearer(key)) for n in range(30))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 10 + [429] * 20
    remaining = sorted(
        int(r.headers["ratelimit-remaining"]) for r in responses if r.status_code == 200
    )
    assert remaining == list(range(10))
