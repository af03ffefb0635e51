"""Browser rendering: JavaScript pages indexed and answered, the pool, and the browser's SSRF guard."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest
from conftest import start_system, stop_system
from e2e_helpers import wait_terminal

from helpline.cli.natsserver import NatsServer, free_port
from helpline.common.breaker import BreakerPolicy, CircuitBreaker
from helpline.common.embedding import Embedder
from helpline.common.errors import Retryable
from helpline.common.guard import AllowList
from helpline.common.messages import utcnow
from helpline.common.processes import group_members, marked_processes
from helpline.scraper.app import ScraperComponent
from helpline.scraper.browser import BrowserOptions, BrowserPool
from helpline.scraper.fetch import FetchResult
from helpline.scraper.render import Renderer
from helpline.testing import serve_site

pytestmark = pytest.mark.slow

CANARY_HOST = "127.0.0.2"
FACT = (
    "To pair the Zorblax headset, hold the blue button for seven seconds until the light "
    "blinks twice, then choose Zorblax in your phone's Bluetooth list."
)
FILLER = " ".join(
    f"Paragraph {i} of the warranty explains that repairs are free within two years."
    for i in range(6)
)


PORTALS = Path(__file__).resolve().parent / "portals"
#: tests/portals' shells: a question each, and the fact its answer must hold.
SHELLS = {
    "shell-angular.html": ("When does Quillon Desk sign me out automatically?", "45 minutes"),
    "shell-api-reference.html": (
        "How many requests per minute does the Quillon REST API allow?",
        "600 requests per minute",
    ),
    "shell-docsify.html": ("Where does the Quillon CLI read its API token from?", "QUILLON_TOKEN"),
    "shell-next.html": ("How long does a Quillon Pay refund take to reach my card?", "5 to 10"),
    "shell-nuxt.html": ("How far away can the Quillon Scanner read a barcode?", "40 cm"),
    "shell-react.html": ("How do I calibrate the battery of the Quillon X2?", "6 hours"),
    "shell-vue.html": ("How do I roll back the firmware of the Quillon Hub?", "Firmware history"),
}


def _find_browser() -> str | None:
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed here with apt when missing; skipped only where none can be had."""
    found = _find_browser()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
            subprocess.run(install, env=env, capture_output=True, check=False)
        found = _find_browser()
    if found is None:
        reason = "no browser: chromium is not installed and apt-get is not available as root"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    return found


class Canary:
    """A TCP server on another loopback address that counts every connection made to it."""

    def __init__(self, host: str = CANARY_HOST) -> None:
        self.port = free_port(host)
        self.hits = 0
        self._sock = socket.create_server((host, self.port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self.url = f"http://{host}:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.hits += 1
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    server = Canary()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, canary: Canary) -> Iterator[str]:
    root = tmp_path_factory.mktemp("js-site")
    (root / "portal.html").write_text(
        textwrap.dedent(
            f"""\
            <html><head><title>Zorblax portal</title>
            <script>
            window.addEventListener("load", async () => {{
              const app = document.getElementById("app");
              app.innerHTML = "<h1>Pairing</h1><p>{FACT}</p>";
              const extra = await (await fetch("/extra.json")).json();
              const p = document.createElement("p");
              p.textContent = extra.text;
              app.appendChild(p);
            }});
            </script></head>
            <body><div id="app">Loading…</div><noscript>Enable JavaScript.</noscript></body></html>
            """
        )
    )
    (root / "extra.json").write_text('{"text": "' + FILLER + '"}')
    (root / "plain.html").write_text(
        f"<html><head><title>Warranty</title><script>console.log(1)</script></head>"
        f"<body><h1>Warranty</h1><p>{FILLER}</p></body></html>"
    )
    canary_url = canary.url
    (root / "pivot.html").write_text(
        textwrap.dedent(
            f"""\
            <html><head><title>Pivot</title>
            <link rel="preconnect" href="{canary_url}">
            <link rel="stylesheet" href="{canary_url}/style.css">
            <script src="{canary_url}/evil.js"></script>
            </head><body><div id="app"></div>
            <img src="{canary_url}/pixel.gif">
            <iframe src="{canary_url}/frame.html"></iframe>
            <iframe src="/hop.html"></iframe>
            <script>
            fetch("{canary_url}/fetch").catch(() => null);
            const x = new XMLHttpRequest(); x.open("GET", "{canary_url}/xhr"); x.send();
            try {{ new WebSocket("ws://{CANARY_HOST}:{canary.port}/ws"); }} catch (e) {{}}
            new Worker(URL.createObjectURL(new Blob(
              ['fetch("{canary_url}/worker").catch(() => null)'], {{type: "text/javascript"}})));
            navigator.sendBeacon("{canary_url}/beacon", "x");
            document.getElementById("app").innerHTML = "<p>{FACT} {FILLER}</p>";
            </script></body></html>
            """
        )
    )
    (root / "hop.html").write_text(
        f'<html><body><script>location.href = "{canary_url}/navigated";</script></body></html>'
    )
    (root / "stuck.html").write_text(
        '<html><body><div id="app"></div><script src="/slow.js"></script></body></html>'
    )
    with serve_site(root, routes={"/slow.js": _slow_script}) as url:
        yield url


SLOW_SCRIPT_REQUESTED = threading.Event()


def _slow_script(request: SimpleHTTPRequestHandler) -> None:
    SLOW_SCRIPT_REQUESTED.set()
    time.sleep(2.0)
    with contextlib.suppress(OSError):
        request.send_response(200)
        request.send_header("Content-Type", "text/javascript")
        request.send_header("Content-Length", "2")
        request.end_headers()
        request.wfile.write(b"1;")


def options(chromium: str, **extra: object) -> BrowserOptions:
    values: dict[str, object] = {
        "executable_path": chromium,
        "pages": 2,
        "timeout_s": 15.0,
        "settle_s": 1.0,
    }
    values.update(extra)
    return BrowserOptions(**values)  # type: ignore[arg-type]


def fetched(url: str, html: str) -> FetchResult:
    return FetchResult(url, 200, "text/html", html, {}, utcnow())


def breaker() -> CircuitBreaker:
    return CircuitBreaker("browser", BreakerPolicy(5, 45.0))


async def test_javascript_pages_are_indexed_and_answered_plain_pages_are_not_rendered(
    nats_server: NatsServer,
    prefix: str,
    tmp_path: Path,
    model: Embedder,
    site: str,
    chromium: str,
) -> None:
    system = await start_system(
        nats_server.url,
        prefix,
        tmp_path,
        model,
        scraper_timeout_s=10.0,
        browser_executable_path=chromium,
        browser_pages=2,
    )
    try:
        scraper = next(c for c in system.host.components if isinstance(c, ScraperComponent))
        assert scraper.renderer is not None
        pool = scraper.renderer.pool

        response = await system.client.post(
            "/api/v1/scrape", json={"url": f"{site}/portal.html", "brand": "zorblax"}
        )
        assert response.status_code == 202, response.text
        record = await wait_terminal(system.client, response.json()["task_id"], timeout_s=45)
        assert record["status"] == "succeeded", record
        assert pool.renders == 1

        answer = await system.client.post(
            "/api/v1/query",
            json={"question": "How do I pair the Zorblax headset?", "brand": "zorblax"},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["sources"][0]["url"] == f"{site}/portal.html"
        assert "seven seconds" in body["answer"]

        response = await system.client.post(
            "/api/v1/scrape", json={"url": f"{site}/plain.html", "brand": "zorblax"}
        )
        record = await wait_terminal(system.client, response.json()["task_id"], timeout_s=30)
        assert record["status"] == "succeeded", record
        assert pool.renders == 1  # enough text without scripts running: no browser

        response = await system.client.post(
            "/api/v1/scrape",
            json={"url": f"{site}/portal.html", "brand": "other", "render": "never"},
        )
        record = await wait_terminal(system.client, response.json()["task_id"], timeout_s=30)
        assert pool.renders == 1
        bad = await system.client.post(
            "/api/v1/scrape", json={"url": f"{site}/plain.html", "brand": "x", "render": "maybe"}
        )
        assert bad.status_code == 422

        # The shells frameworks ship, their frame server-rendered: each rendered and answered;
        # server-rendered pages with scripts of their own: none rendered.
        with serve_site(PORTALS) as portals:
            urls = [f"{portals}/{path.name}" for path in sorted(PORTALS.glob("*.html"))]
            response = await system.client.post(
                "/api/v1/scrape/batch",
                json={"urls": urls, "brand": "quillon", "max_concurrent": 4},
            )
            assert response.status_code == 202, response.text
            record = await wait_terminal(system.client, response.json()["task_id"], timeout_s=120)
            assert record["result"]["pages_ok"] == len(urls), record
            assert pool.renders == 1 + len(SHELLS)
            for name, (question, fact) in SHELLS.items():
                answer = await system.client.post(
                    "/api/v1/query", json={"question": question, "brand": "quillon"}
                )
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert body["sources"][0]["url"] == f"{portals}/{name}", (question, body)
                assert fact in body["answer"], (question, body["answer"])
        marker = pool.marker
        assert marked_processes(marker)
    finally:
        await stop_system(system)
    assert marked_processes(marker) == []


async def test_browser_requests_never_reach_a_blocked_address(
    site: str, canary: Canary, chromium: str
) -> None:
    pool = BrowserPool(AllowList.parse("127.0.0.1"), options(chromium))
    renderer = Renderer(pool, breaker())
    before = canary.hits
    try:
        html = (await asyncio.to_thread(_get, f"{site}/pivot.html")).decode()
        page = await renderer.render(fetched(f"{site}/pivot.html", html))
    finally:
        await pool.close()
    assert "seven seconds" in page.text
    assert pool.blocked_requests >= 4  # stylesheet, script, frame, fetch, XHR, worker, navigation
    assert canary.hits == before


async def test_pool_reuses_pages_recycles_and_leaves_no_process(site: str, chromium: str) -> None:
    pool = BrowserPool(
        AllowList.parse("127.0.0.1"), options(chromium, pages=2, page_uses=3, browser_uses=8)
    )
    renderer = Renderer(pool, breaker())
    html = (await asyncio.to_thread(_get, f"{site}/portal.html")).decode()
    try:
        pages = await asyncio.gather(
            *(renderer.render(fetched(f"{site}/portal.html", html)) for _ in range(6))
        )
        assert all("seven seconds" in p.text for p in pages)
        assert pool.launches == 1
        assert 2 <= pool.pages_opened <= 4  # two pages, each replaced after three renders
        for _ in range(3):
            await renderer.render(fetched(f"{site}/portal.html", html))
        assert pool.launches == 2  # the browser was restarted after eight renders
        marker = pool.marker
        groups = {os.getpgid(pid) for pid in marked_processes(marker)}
        assert groups
    finally:
        await pool.close()
    assert marked_processes(marker) == []
    assert all(group_members(g) == [] for g in groups)


async def test_a_browser_crash_is_retried_counted_and_recovered(site: str, chromium: str) -> None:
    pool = BrowserPool(AllowList.parse("127.0.0.1"), options(chromium))
    renderer = Renderer(pool, breaker())
    stuck = fetched(
        f"{site}/stuck.html", (await asyncio.to_thread(_get, f"{site}/stuck.html")).decode()
    )
    try:
        SLOW_SCRIPT_REQUESTED.clear()
        rendering = asyncio.create_task(renderer.render(stuck))
        await asyncio.to_thread(SLOW_SCRIPT_REQUESTED.wait, 15)
        for pid in marked_processes(pool.marker):
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        with pytest.raises(Retryable, match="browser failed"):
            await rendering
        assert renderer.breaker.snapshot()["consecutive_failures"] == 1
        html = (await asyncio.to_thread(_get, f"{site}/portal.html")).decode()
        page = await renderer.render(fetched(f"{site}/portal.html", html))
        assert "seven seconds" in page.text
        assert pool.launches == 2
        assert renderer.breaker.snapshot()["consecutive_failures"] == 0
    finally:
        await pool.close()
    assert marked_processes(pool.marker) == []


def test_a_killed_scraper_leaves_no_browser(site: str, chromium: str) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from helpline.common.breaker import BreakerPolicy, CircuitBreaker
        from helpline.common.messages import utcnow
        from helpline.scraper.fetch import FetchResult
        from helpline.common.guard import AllowList
        from helpline.scraper.browser import BrowserOptions, BrowserPool
        from helpline.scraper.render import Renderer

        async def main():
            pool = BrowserPool(AllowList.parse("127.0.0.1"), BrowserOptions(executable_path={chromium!r}))
            renderer = Renderer(pool, CircuitBreaker("browser", BreakerPolicy()))
            page = FetchResult({site + "/plain.html"!r}, 200, "text/html", "<p>x</p>", {{}}, utcnow())
            await renderer.render(page)
            print(pool.marker, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        marker = proc.stdout.readline().strip()
        assert marker.startswith("--helpline-pool=")
        assert marked_processes(marker)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    # The driver sees its pipe close and exits; Chromium dies with the driver.
    deadline = time.monotonic() + 20
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marked_processes(marker) == []


async def test_a_browser_past_its_memory_limit_is_restarted(site: str, chromium: str) -> None:
    # Memory is checked every tenth render; no Chromium fits in 1 MB.
    pool = BrowserPool(AllowList.parse("127.0.0.1"), options(chromium, max_memory_mb=1))
    renderer = Renderer(pool, breaker())
    plain = fetched(f"{site}/plain.html", f"<p>{FILLER}</p>")
    try:
        for _ in range(11):
            await renderer.render(plain)
        assert pool.launches == 2
        assert pool.pages_opened == 2
    finally:
        await pool.close()
    assert marked_processes(pool.marker) == []


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body
