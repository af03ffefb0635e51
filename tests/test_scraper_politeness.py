"""Polite crawling through the real system: robots.txt (RFC 9309), a pace shared by two
scraper replicas, Retry-After, sitemaps and canonical URLs."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import System, settings_for, start_system, stop_system
from e2e_helpers import wait_terminal

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.common.guard import AllowList
from helpline.common.runtime import Host
from helpline.scraper.app import ScraperComponent
from helpline.scraper.fetch import Fetcher
from helpline.scraper.politeness import Politeness, Robots
from helpline.scraper.settings import ScraperSettings

Reply = tuple[int, dict[str, str], bytes]


def html(title: str, body: str, head: str = "") -> Reply:
    page = f"<html><head><title>{title}</title>{head}</head><body><main><h1>{title}</h1>{body}</main></body></html>"
    return 200, {"Content-Type": "text/html; charset=utf-8"}, page.encode()


def text(status: int, body: str, content_type: str = "text/plain") -> Reply:
    return status, {"Content-Type": content_type}, body.encode()


@dataclass
class Site:
    """A site whose paths answer from a table; every hit is recorded with its user agent."""

    base: str = ""
    routes: dict[str, Callable[[], Reply]] = field(default_factory=dict)
    hits: list[tuple[float, str, str]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.hits]

    def page_hits(self) -> list[tuple[float, str, str]]:
        return [h for h in self.hits if h[1] not in {"/robots.txt", "/sitemap.xml", "/sm.xml"}]


@pytest.fixture
def make_site() -> Iterator[Callable[[], Site]]:
    servers: list[ThreadingHTTPServer] = []

    def make() -> Site:
        site = Site()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                site.hits.append((time.monotonic(), self.path, self.headers.get("User-Agent", "")))
                route = site.routes.get(self.path)
                status, headers, body = route() if route else text(404, "not here")
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        site.base = f"http://127.0.0.1:{server.server_address[1]}"
        return site

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


async def submit(system: System, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await system.client.post(path, json={"brand": "acme", **body})
    assert response.status_code == 202, response.text
    return await wait_terminal(system.client, response.json()["task_id"], timeout_s=60)


async def test_robots_disallow_sitemaps_and_canonical_urls(
    system: System, make_site: Callable[[], Site]
) -> None:
    site = make_site()
    b = site.base
    site.routes = {
        "/robots.txt": lambda: text(
            200,
            "User-agent: OtherBot\nDisallow: /\n\n"
            f"User-agent: *\nDisallow: /private/\nSitemap: {b}/sm.xml\n",
        ),
        "/sm.xml": lambda: text(
            200,
            '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<url><loc>{b}/orphan.html</loc></url><url><loc>{b}/private/hidden.html</loc></url>"
            "<url><loc>https://elsewhere.example/page.html</loc></url></urlset>",
            "application/xml",
        ),
        "/index.html": lambda: html(
            "Home",
            '<p>Welcome to the hub documentation.</p><a href="/guide.html">Guide</a>'
            '<a href="/private/secret.html">Secret</a><a href="/alias.html">Alias</a>',
        ),
        "/guide.html": lambda: html(
            "Guide",
            "<p>The hub pairs with up to forty sensors at a time.</p>",
            head='<link rel="canonical" href="https://evil.example/guide.html">',
        ),
        "/alias.html": lambda: html(
            "Alias",
            "<p>Batteries last about eighteen months in normal use.</p>",
            head=f'<link rel="canonical" href="{b}/batteries.html">',
        ),
        "/orphan.html": lambda: html("Orphan", "<p>Only the sitemap links this page.</p>"),
        "/private/secret.html": lambda: html("Secret", "<p>internal</p>"),
        "/private/hidden.html": lambda: html("Hidden", "<p>internal</p>"),
    }
    parent = await submit(
        system, "/api/v1/crawl", {"url": f"{b}/index.html", "max_pages": 20, "max_depth": 3}
    )
    assert parent["status"] == "succeeded", parent
    # index, guide, alias (from links) and orphan (from the sitemap); nothing under /private/.
    assert parent["progress"] == {"done": 4, "total": 4}, parent
    assert parent["result"]["pages_ok"] == 4, parent
    assert not [p for p in site.paths() if p.startswith("/private/")]

    store = system.knowledge.store
    assert store.hashes_for_url(f"{b}/orphan.html", "acme")
    # A canonical URL on the same site names the page; one elsewhere is ignored.
    assert store.hashes_for_url(f"{b}/batteries.html", "acme")
    assert not store.hashes_for_url(f"{b}/alias.html", "acme")
    assert store.hashes_for_url(f"{b}/guide.html", "acme")
    assert not store.hashes_for_url("https://evil.example/guide.html", "acme")

    # Asked for directly, a disallowed page fails at once without being fetched.
    record = await submit(system, "/api/v1/scrape", {"url": f"{b}/private/secret.html"})
    assert record["status"] == "failed"
    assert record["error"]["message"] == "disallowed by robots.txt"
    assert record["attempts"] == 1
    assert not [p for p in site.paths() if p.startswith("/private/")]
    assert site.paths().count("/robots.txt") == 1  # cached per host


async def test_robots_server_error_disallows_everything(
    system: System, make_site: Callable[[], Site]
) -> None:
    site = make_site()
    site.routes = {
        "/robots.txt": lambda: text(503, "down"),
        "/page.html": lambda: html("Page", "<p>text</p>"),
    }
    record = await submit(system, "/api/v1/scrape", {"url": f"{site.base}/page.html"})
    assert record["status"] == "failed", record
    assert "robots.txt answered HTTP 503" in record["error"]["message"]
    assert "/page.html" not in site.paths()


async def test_robots_client_error_allows_everything(
    system: System, make_site: Callable[[], Site]
) -> None:
    site = make_site()
    site.routes = {
        "/robots.txt": lambda: text(403, "forbidden"),
        "/page.html": lambda: html("Page", "<p>Forbidden robots means no rules.</p>"),
    }
    record = await submit(system, "/api/v1/scrape", {"url": f"{site.base}/page.html"})
    assert record["status"] == "succeeded", record


async def test_retry_after_is_waited_for_without_spending_attempts(
    system: System, make_site: Callable[[], Site]
) -> None:
    site = make_site()
    answers = iter([text(429, "slow down"), text(503, "busy")])

    def limited() -> Reply:
        status, headers, body = next(answers, html("Limited", "<p>Finally here.</p>"))
        return status, headers | ({"Retry-After": "1"} if status != 200 else {}), body

    site.routes = {"/page.html": limited}
    record = await submit(system, "/api/v1/scrape", {"url": f"{site.base}/page.html"})
    # max_deliver is 2 in tests: two refusals would have used up every attempt.
    assert record["status"] == "succeeded", record
    assert record["attempts"] == 1, record
    times = [t for t, path, _ in site.hits if path == "/page.html"]
    assert len(times) == 3
    assert all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(times))


async def test_crawl_delay_holds_across_two_scraper_replicas(
    nats_server: NatsServer,
    prefix: str,
    tmp_path: Path,
    model: Embedder,
    make_site: Callable[[], Site],
) -> None:
    site = make_site()
    delay = 0.4
    links = "".join(f'<a href="/p{i}.html">page {i}</a>' for i in range(5))
    site.routes = {
        "/robots.txt": lambda: text(200, f"User-agent: *\nCrawl-delay: {delay}\n"),
        "/index.html": lambda: html("Index", f"<p>All the pages.</p>{links}"),
        **{
            f"/p{i}.html": (lambda i=i: html(f"P{i}", f"<p>Page number {i}.</p>")) for i in range(5)
        },
    }
    one = {"scraper_concurrency": 1}
    system = await start_system(
        nats_server.url, prefix, tmp_path, model, scraper_user_agent="HelplineBot/0.1 (a)", **one
    )
    settings = settings_for(
        ScraperSettings,
        nats_server.url,
        prefix,
        tmp_path,
        scraper_user_agent="HelplineBot/0.1 (b)",
        **one,
    )
    replica = Host(settings, [ScraperComponent(settings)], name=f"{prefix}-scraper-b")  # type: ignore[arg-type, list-item]
    await replica.start()
    try:
        parent = await submit(
            system, "/api/v1/crawl", {"url": f"{site.base}/index.html", "max_pages": 10}
        )
    finally:
        await replica.stop()
        await stop_system(system)
    assert parent["status"] == "succeeded", parent
    assert parent["result"]["pages_ok"] == 6, parent
    pages = site.page_hits()
    assert len(pages) == 6
    agents = {agent for _, _, agent in pages}
    assert agents == {"HelplineBot/0.1 (a)", "HelplineBot/0.1 (b)"}, pages
    gaps = [later - earlier for (earlier, _, _), (later, _, _) in itertools.pairwise(pages)]
    # The pace is reserved in a shared bucket: no two requests closer than the delay, less
    # the jitter between reserving a turn and the request reaching the site.
    assert min(gaps) >= delay * 0.75, gaps


async def test_a_turn_woken_late_is_not_taken_next_to_the_following_one(
    nats_server: NatsServer, prefix: str
) -> None:
    """A blocked event loop wakes a waiting request late; going then would start it right
    before the next replica's turn. It takes a new turn after that one instead."""
    interval = 0.4
    nc = await nats.connect(nats_server.url)
    try:
        kv = await nc.jetstream().create_key_value(bucket=f"{prefix}-hosts")

        async def hosts() -> Any:
            return kv

        fetcher = Fetcher(AllowList())
        ours = Politeness(fetcher, hosts, host_interval_s=interval)
        other = Politeness(fetcher, hosts, host_interval_s=interval)
        rules = Robots(None, True)
        url = "http://docs.example.com/a.html"
        went: dict[str, float] = {}

        async def turn(who: Politeness, name: str) -> None:
            await who.wait_turn(url, rules)
            went[name] = time.monotonic()

        await turn(ours, "first")  # the host's first turn, at once; the next is 0.4 s on
        ours_task = asyncio.create_task(turn(ours, "ours"))
        await asyncio.sleep(0.05)  # ours reserved the next turn and sleeps until it
        other_task = asyncio.create_task(turn(other, "other"))  # the turn after: 0.8 s on
        await asyncio.sleep(0.05)
        time.sleep(0.6)  # noqa: ASYNC251  (blocks the loop: ours is due at 0.4 s, wakes at 0.7 s)
        await asyncio.gather(ours_task, other_task)
        await fetcher.aclose()
    finally:
        await nc.close()
    # The other replica went on time; ours, woken late, went a whole gap after it.
    assert went["other"] - went["first"] >= 2 * interval * 0.9, went
    assert went["ours"] - went["other"] >= interval * 0.9, went
