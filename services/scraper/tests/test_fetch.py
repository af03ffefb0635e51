from __future__ import annotations

import asyncio
import gzip
import importlib.abc
import socket
import sys
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from helpline.common.errors import BlockedAddress, Permanent, Retryable
from helpline.common.guard import AllowList
from helpline.common.httpguard import GuardedTransport, parse_retry_after
from helpline.scraper.bodies import decode_body
from helpline.scraper.fetch import DEFAULT_USER_AGENT, Fetcher, Validators

LOOPBACK = AllowList.parse("127.0.0.1")
PAGE = (
    "<html><head><title>Hello</title></head><body><p>Grüße from the test server.</p></body></html>"
)


@dataclass
class Site:
    base: str
    port: int
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


class _Server(ThreadingHTTPServer):
    # Non-daemon handler threads, so server_close() waits for every one of them.
    daemon_threads = False
    block_on_close = True


def _handler(site: Site, release: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(
            self, status: int, body: bytes, headers: dict[str, str], length: bool = True
        ) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            site.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            html = {"Content-Type": "text/html; charset=utf-8"}
            match self.path:
                case "/page":
                    self._send(200, PAGE.encode(), html | {"X-Test": "yes"})
                case "/latin1":
                    body = "<p>Café crème</p>".encode("iso-8859-1")
                    self._send(200, body, {"Content-Type": "text/html; charset=ISO-8859-1"})
                case "/meta-charset":
                    body = '<meta charset="windows-1252"><p>\u201cQuoted\u201d café</p>'.encode(
                        "cp1252"
                    )
                    self._send(200, body, {"Content-Type": "text/html"})
                case "/xhtml":
                    self._send(200, b"<html/>", {"Content-Type": "application/xhtml+xml"})
                case "/missing":
                    self._send(404, b"nope", html)
                case "/gone":
                    self._send(410, b"gone", html)
                case "/slow":
                    release.wait(10)
                case "/pdf":
                    self._send(200, b"%PDF-1.7", {"Content-Type": "application/pdf"})
                case "/pdf-unlabelled":
                    self._send(200, b"%PDF-1.7", {"Content-Type": "application/octet-stream"})
                case "/gzip":
                    self._send(
                        200, gzip.compress(PAGE.encode()), html | {"Content-Encoding": "gzip"}
                    )
                case "/deflate-raw":
                    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
                    raw = packer.compress(PAGE.encode()) + packer.flush()
                    self._send(200, raw, html | {"Content-Encoding": "deflate"})
                case "/brotli":
                    self._send(200, b"\x0b\x02\x80hi\x03", html | {"Content-Encoding": "br"})
                case "/bomb":
                    bomb = gzip.compress(b"<p>" + b"a" * 50_000 + b"</p>")
                    self._send(200, bomb, html | {"Content-Encoding": "gzip"})
                case "/etag":
                    if self.headers.get("If-None-Match") == '"v1"':
                        self._send(304, b"", {"ETag": '"v1"'}, length=False)
                    else:
                        self._send(
                            200,
                            PAGE.encode(),
                            html
                            | {"ETag": '"v1"', "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"},
                        )
                case "/zip":
                    self._send(200, b"PK\x03\x04", {"Content-Type": "application/zip"})
                case "/hop":
                    self._send(302, b"", {"Location": "/page"})
                case "/hop-absolute":
                    self._send(301, b"", {"Location": site.url("/hop")})
                case "/loop":
                    self._send(302, b"", {"Location": "/loop"})
                case "/escape":
                    self._send(302, b"", {"Location": f"http://127.0.0.2:{site.port}/page"})
                case "/to-ftp":
                    self._send(302, b"", {"Location": "ftp://127.0.0.1/file"})
                case "/big":
                    self._send(200, b"x" * 2_000, html)
                case "/big-unannounced":
                    self._send(200, b"x" * 2_000, html, length=False)
                case "/busy":
                    self._send(503, b"", html | {"Retry-After": "7"})
                case "/limited":
                    self._send(429, b"", html | {"Retry-After": "120"})
                case "/broken":
                    self._send(500, b"", html)
                case "/teapot":
                    self._send(418, b"", html)
                case _:
                    self._send(400, b"", html)

    return Handler


@pytest.fixture
def site() -> Iterator[Site]:
    release = threading.Event()
    served = Site(base="", port=0)
    server = _Server(("127.0.0.1", 0), _handler(served, release))
    served.port = server.server_address[1]
    served.base = f"http://127.0.0.1:{served.port}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="test-site")
    thread.start()
    try:
        yield served
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    async with Fetcher(LOOPBACK, timeout_s=2.0, max_bytes=1_000) as f:
        yield f


async def test_fetches_an_html_page(site: Site, fetcher: Fetcher) -> None:
    before = datetime.now(UTC)
    result = await fetcher.fetch(site.url("/page"))
    assert result.url == site.url("/page")
    assert result.status == 200
    assert result.content_type == "text/html"
    assert result.text == PAGE
    assert result.headers["x-test"] == "yes"
    assert result.headers["content-type"] == "text/html; charset=utf-8"
    assert result.fetched_at.tzinfo is not None
    assert before <= result.fetched_at <= datetime.now(UTC)


class _ImportRecorder(importlib.abc.MetaPathFinder):
    """Sees every import the module cache cannot answer (then lets the real finders search)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        self.names.append(fullname)


async def test_a_fetch_searches_the_import_path_for_nothing(site: Site, fetcher: Fetcher) -> None:
    # httpcore imports sniffio each time it takes a lock (several per request); without the
    # package installed, every one of those imports failed after a search of sys.path.
    await fetcher.fetch(site.url("/page"))
    recorder = _ImportRecorder()
    sys.meta_path.insert(0, recorder)
    try:
        await fetcher.fetch(site.url("/page"))
    finally:
        sys.meta_path.remove(recorder)
    assert recorder.names == []


async def test_sends_the_bot_user_agent(site: Site, fetcher: Fetcher) -> None:
    await fetcher.fetch(site.url("/page"))
    [(_, headers)] = site.requests
    assert headers["user-agent"] == DEFAULT_USER_AGENT
    assert "text/html" in headers["accept"]


async def test_follows_redirects_and_reports_the_final_url(site: Site, fetcher: Fetcher) -> None:
    result = await fetcher.fetch(site.url("/hop-absolute"))
    assert result.url == site.url("/page")
    assert result.text == PAGE
    assert site.paths == ["/hop-absolute", "/hop", "/page"]


async def test_too_many_redirects_is_permanent(site: Site) -> None:
    async with Fetcher(LOOPBACK, max_redirects=3) as fetcher:
        with pytest.raises(Permanent, match="too many redirects"):
            await fetcher.fetch(site.url("/loop"))
    assert site.paths == ["/loop"] * 4


@pytest.mark.parametrize(("path", "status"), [("/missing", "404 Not Found"), ("/gone", "410 Gone")])
async def test_client_errors_are_permanent(
    site: Site, fetcher: Fetcher, path: str, status: str
) -> None:
    with pytest.raises(Permanent) as caught:
        await fetcher.fetch(site.url(path))
    assert caught.value.message == f"HTTP {status} from {site.url(path)}"


async def test_other_4xx_is_permanent(site: Site, fetcher: Fetcher) -> None:
    with pytest.raises(Permanent, match="HTTP 418"):
        await fetcher.fetch(site.url("/teapot"))


async def test_503_is_retryable_after_retry_after(site: Site, fetcher: Fetcher) -> None:
    with pytest.raises(Retryable, match="HTTP 503") as caught:
        await fetcher.fetch(site.url("/busy"))
    assert caught.value.retry_after == 7


async def test_429_is_retryable_after_retry_after(site: Site, fetcher: Fetcher) -> None:
    with pytest.raises(Retryable, match="HTTP 429") as caught:
        await fetcher.fetch(site.url("/limited"))
    assert caught.value.retry_after == 120


async def test_500_is_retryable(site: Site, fetcher: Fetcher) -> None:
    with pytest.raises(Retryable, match="HTTP 500") as caught:
        await fetcher.fetch(site.url("/broken"))
    assert caught.value.retry_after is None


async def test_slow_server_times_out_as_retryable(site: Site) -> None:
    async with Fetcher(LOOPBACK, timeout_s=0.3) as fetcher:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Retryable, match="timed out fetching"):
            await fetcher.fetch(site.url("/slow"))
        assert loop.time() - started < 3


async def test_refused_connection_is_retryable(fetcher: Fetcher) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Retryable, match="network error"):
        await fetcher.fetch(f"http://127.0.0.1:{port}/")


async def test_non_html_is_permanent(site: Site, fetcher: Fetcher) -> None:
    with pytest.raises(Permanent, match=r"not an HTML page \(content type application/zip\)"):
        await fetcher.fetch(site.url("/zip"))


@pytest.mark.parametrize("path", ["/pdf", "/pdf-unlabelled"])
async def test_pdfs_are_accepted_by_content_type_or_signature(
    site: Site, fetcher: Fetcher, path: str
) -> None:
    result = await fetcher.fetch(site.url(path))
    assert result.is_pdf
    assert result.body == b"%PDF-1.7"


async def test_xhtml_is_accepted(site: Site, fetcher: Fetcher) -> None:
    result = await fetcher.fetch(site.url("/xhtml"))
    assert result.content_type == "application/xhtml+xml"


async def test_accepted_content_types_are_configurable(site: Site) -> None:
    async with Fetcher(LOOPBACK, content_types={"application/pdf"}) as fetcher:
        assert (await fetcher.fetch(site.url("/pdf"))).body == b"%PDF-1.7"
        with pytest.raises(Permanent, match="content type text/html"):
            await fetcher.fetch(site.url("/page"))


async def test_redirect_to_a_blocked_address_is_refused_before_connecting(
    site: Site, fetcher: Fetcher
) -> None:
    with pytest.raises(BlockedAddress, match="blocked address"):
        await fetcher.fetch(site.url("/escape"))
    assert site.paths == ["/escape"]


async def test_redirect_to_another_scheme_is_refused(site: Site, fetcher: Fetcher) -> None:
    with pytest.raises(BlockedAddress, match="only http and https"):
        await fetcher.fetch(site.url("/to-ftp"))


async def test_first_hop_is_checked_too(site: Site) -> None:
    async with Fetcher(AllowList.parse("")) as fetcher:
        with pytest.raises(BlockedAddress):
            await fetcher.fetch(site.url("/page"))
    assert site.requests == []


@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
async def test_body_over_max_bytes_is_permanent(site: Site, fetcher: Fetcher, path: str) -> None:
    with pytest.raises(Permanent, match="response larger than 1000 bytes"):
        await fetcher.fetch(site.url(path))


async def test_charset_from_the_header_is_used(site: Site, fetcher: Fetcher) -> None:
    assert (await fetcher.fetch(site.url("/latin1"))).text == "<p>Café crème</p>"


async def test_charset_from_meta_is_used_when_the_header_has_none(
    site: Site, fetcher: Fetcher
) -> None:
    result = await fetcher.fetch(site.url("/meta-charset"))
    assert "\u201cQuoted\u201d café" in result.text


async def test_guarded_transport_checks_addresses_at_connect_time(site: Site) -> None:
    async with httpx.AsyncClient(transport=GuardedTransport(AllowList.parse(""))) as client:
        with pytest.raises(BlockedAddress):
            await client.get(site.url("/page"))
    async with httpx.AsyncClient(transport=GuardedTransport(LOOPBACK)) as client:
        assert (await client.get(site.url("/page"))).status_code == 200
    assert site.paths == ["/page"]


async def test_dns_rebinding_between_check_and_connect_is_blocked(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter(["93.184.215.14", "127.0.0.1"])
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        assert host == "rebind.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    async with Fetcher(AllowList.parse("")) as fetcher:
        with pytest.raises(BlockedAddress):
            await fetcher.fetch(f"http://rebind.example:{site.port}/page")
    assert site.requests == []


async def test_injected_transport_is_used() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, html="<p>hi</p>")

    async with Fetcher(AllowList.parse(""), transport=httpx.MockTransport(handler)) as fetcher:
        result = await fetcher.fetch("HTTP://93.184.215.14:80/a/../b#x")
    assert seen == ["http://93.184.215.14/b"]
    assert result.url == "http://93.184.215.14/b"
    assert result.text == "<p>hi</p>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("7", 7.0),
        (" 0 ", 0.0),
        ("soon", None),
        ("-5", None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == expected


@pytest.mark.parametrize(
    ("body", "charset", "expected"),
    [
        ("é".encode(), None, "é"),
        ("é".encode("latin-1"), "latin-1", "é"),
        ("é".encode("latin-1"), None, "é"),
        ("é".encode(), "no-such-charset", "é"),
        ("é".encode(), "zlib", "é"),
        (b"\xef\xbb\xbf" + "é".encode(), "latin-1", "é"),
        ("é".encode("utf-16"), None, "é"),
    ],
)
def test_decode_body(body: bytes, charset: str | None, expected: str) -> None:
    assert decode_body(body, charset) == expected


async def test_every_redirect_hop_is_checked_even_with_an_injected_transport() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://10.0.0.1/admin"})

    async with Fetcher(AllowList.parse(""), transport=httpx.MockTransport(handler)) as fetcher:
        with pytest.raises(BlockedAddress):
            await fetcher.fetch("http://93.184.215.14/start")
    assert seen == ["http://93.184.215.14/start"]


@pytest.mark.parametrize("path", ["/gzip", "/deflate-raw"])
async def test_compressed_pages_are_inflated(site: Site, fetcher: Fetcher, path: str) -> None:
    assert (await fetcher.fetch(site.url(path))).text == PAGE


async def test_unsupported_encodings_are_refused(site: Site, fetcher: Fetcher) -> None:
    with pytest.raises(Permanent, match="unsupported content encoding"):
        await fetcher.fetch(site.url("/brotli"))


async def test_the_size_cap_counts_inflated_bytes(site: Site, fetcher: Fetcher) -> None:
    with pytest.raises(Permanent, match="response larger than 1000 bytes"):
        await fetcher.fetch(site.url("/bomb"))


async def test_conditional_get_reports_an_unchanged_page(site: Site, fetcher: Fetcher) -> None:
    first = await fetcher.fetch(site.url("/etag"))
    assert first.validators == Validators('"v1"', "Wed, 21 Oct 2015 07:28:00 GMT")
    again = await fetcher.fetch(site.url("/etag"), first.validators)
    assert again.not_modified
    assert site.requests[-1][1]["if-none-match"] == '"v1"'
    assert site.requests[-1][1]["if-modified-since"] == "Wed, 21 Oct 2015 07:28:00 GMT"
