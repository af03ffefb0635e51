"""SSRF and hostile responses, through the real system: a canary on 127.0.0.2 must never be hit.

The scraper's allow-list names only 127.0.0.1 (the test site); the canary listens on another
loopback address, so every way of spelling or reaching it must be refused before connecting.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import System, drop_streams, start_system, stop_system
from e2e_helpers import wait_terminal

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder

pytestmark = pytest.mark.asyncio(loop_scope="module")

CANARY_HOST = "127.0.0.2"


def _gzip_bomb(inflated: int) -> bytes:
    """`inflated` zero bytes, gzipped (about a thousandth of that on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b"\0" * 1_000_000
    parts = [packer.compress(block) for _ in range(inflated // len(block))]
    return b"".join([*parts, packer.flush()])


BOMB = _gzip_bomb(200_000_000)


@dataclass
class Server:
    base: str
    port: int
    hits: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _serve(host: str, handler: type[BaseHTTPRequestHandler]) -> Iterator[tuple[str, int]]:
    server = _Server((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def canary() -> Iterator[Server]:
    state = Server("", 0)

    class Canary(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.hits.append(self.path)
            body = b"<html><body><p>internal secret</p></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    for base, port in _serve(CANARY_HOST, Canary):
        state.base, state.port = base, port
        yield state


@pytest.fixture(scope="module")
def hostile(canary: Server) -> Iterator[Server]:
    """The test site (allowed): redirect pivots and hostile responses."""
    state = Server("", 0)

    class Hostile(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            state.hits.append(self.path)
            path = self.path
            if path == "/robots.txt":
                self.send_error(404)
            elif path == "/pivot":
                self._redirect(f"{canary.base}/admin")
            elif path == "/pivot-hex":
                self._redirect(f"http://0x7f000002:{canary.port}/admin")
            elif path == "/pivot-mapped":
                self._redirect(f"http://[::ffff:127.0.0.2]:{canary.port}/admin")
            elif path == "/pivot-twice":
                self._redirect("/pivot")
            elif path == "/loop":
                self._redirect("/loop")
            elif path == "/bomb":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(BOMB)))
                self.end_headers()
                self.wfile.write(BOMB)
            elif path == "/endless":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                chunk = b"<p>" + b"a" * 65_536 + b"</p>"
                sent = 0
                try:
                    while sent < 1_000_000_000:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                except OSError:
                    pass
                state.sent[path] = sent
            elif path == "/drip":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                try:
                    for _ in range(100_000):
                        self.wfile.write(b"a")
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:
                    pass
            elif path == "/fat-headers":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                for i in range(64):
                    self.send_header(f"X-Filler-{i}", "f" * 1000)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_error(404)

    for base, port in _serve("127.0.0.1", Hostile):
        state.base, state.port = base, port
        yield state


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory, model: Embedder
) -> AsyncIterator[System]:
    prefix = "tsec" + str(time.monotonic_ns())[-8:]
    system = await start_system(
        nats_server.url, prefix, Path(tmp_path_factory.mktemp("security")), model
    )
    try:
        yield system
    finally:
        await stop_system(system)
        await asyncio.to_thread(drop_streams, nats_server.url, prefix)


async def scrape(system: System, url: str) -> dict[str, Any]:
    response = await system.client.post("/api/v1/scrape", json={"url": url, "brand": "acme"})
    assert response.status_code == 202, response.text
    return await wait_terminal(system.client, response.json()["task_id"], timeout_s=30)


def _assert_blocked(record: dict[str, Any], canary: Server) -> None:
    assert record["status"] == "failed", record
    message = record["error"]["message"]
    assert message.startswith("blocked address"), message
    # No internals: neither the address a name resolved to nor the canary's port.
    assert CANARY_HOST not in message, message
    assert str(canary.port) not in message, message
    assert record["attempts"] == 1, record
    assert canary.hits == []


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/",
        "http://2130706434:{port}/",  # decimal
        "http://0x7f000002:{port}/",  # hex
        "http://0177.0.0.2:{port}/",  # octal
        "http://127.2:{port}/",  # short form
        "http://0x7f.0.0.2:{port}/",  # mixed
        "http://[::ffff:127.0.0.2]:{port}/",  # IPv4-mapped
        "http://[::ffff:7f00:2]:{port}/",  # IPv4-mapped, hex
        "http://[64:ff9b::7f00:2]:{port}/",  # NAT64
        "http://[2002:7f00:2::]:{port}/",  # 6to4
        "http://[::127.0.0.2]:{port}/",  # IPv4-compatible
        "http://0.0.0.0:{port}/",
        "http://[::]:{port}/",
        "http://[::1]:{port}/",
    ],
)
async def test_every_spelling_of_an_internal_address_is_blocked(
    shared: System, canary: Server, target: str
) -> None:
    _assert_blocked(await scrape(shared, target.format(port=canary.port)), canary)


@pytest.mark.parametrize("path", ["/pivot", "/pivot-hex", "/pivot-mapped", "/pivot-twice"])
async def test_a_redirect_pivot_to_the_canary_is_blocked(
    shared: System, canary: Server, hostile: Server, path: str
) -> None:
    _assert_blocked(await scrape(shared, f"{hostile.base}{path}"), canary)
    assert path in hostile.hits


async def test_only_http_and_https_are_accepted(shared: System, canary: Server) -> None:
    for url in (f"ftp://{CANARY_HOST}:{canary.port}/", "file:///etc/passwd"):
        response = await shared.client.post("/api/v1/scrape", json={"url": url, "brand": "acme"})
        assert response.status_code == 422, response.text
    assert canary.hits == []


def _assert_failed_once(record: dict[str, Any], reason: str) -> None:
    assert record["status"] == "failed", record
    assert reason in record["error"]["message"], record["error"]
    # Hostile responses are not worth another attempt.
    assert record["attempts"] == 1, record


async def test_redirect_loop_stops_at_the_hop_limit(shared: System, hostile: Server) -> None:
    _assert_failed_once(await scrape(shared, f"{hostile.base}/loop"), "too many redirects")


async def test_gzip_bomb_stops_at_the_size_cap(shared: System, hostile: Server) -> None:
    _assert_failed_once(await scrape(shared, f"{hostile.base}/bomb"), "response larger than")


async def test_endless_body_stops_at_the_size_cap(shared: System, hostile: Server) -> None:
    _assert_failed_once(await scrape(shared, f"{hostile.base}/endless"), "response larger than")


async def test_slow_drip_is_cut_off(shared: System, hostile: Server) -> None:
    _assert_failed_once(
        await scrape(shared, f"{hostile.base}/drip"), "the body did not arrive within"
    )


async def test_oversized_headers_are_refused(shared: System, hostile: Server) -> None:
    _assert_failed_once(
        await scrape(shared, f"{hostile.base}/fat-headers"), "response headers from"
    )
