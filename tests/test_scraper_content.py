"""PDF manuals cited by page, and incremental re-scrapes (conditional GET, chunk diffs, removal)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from conftest import System
from e2e_helpers import wait_terminal
from pdfgen import make_pdf

from helpline.testing import serve_site

MANUAL = make_pdf(
    [
        ["Acme X1 Router manual", "Unpack the router and connect the power cable."],
        [
            "Factory reset",
            "To restore factory settings, hold the reset button for 12 seconds",
            "until the status light blinks red twice.",
        ],
        ["Warranty", "The warranty covers two years from the date of purchase."],
    ],
    title="Acme X1 Router manual",
)

SECTIONS = {
    "Installing": "Mount the hub on a wall away from metal cabinets. Screw the bracket in first. "
    "Then slide the hub down until it clicks into place and route the cable along the wall.",
    "Pairing": "Press and hold the pair button for three seconds until the light pulses blue. "
    "Open the app and choose Add device. The hub appears within a minute of pairing mode.",
    "Updating": "Firmware updates install overnight between two and four in the morning. "
    "The hub restarts once and keeps every paired device and setting after the update.",
}


@dataclass
class MutableSite:
    """Pages whose content a test changes; answers conditional GETs by ETag."""

    pages: dict[str, bytes | None] = field(default_factory=dict)
    hits: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def route(self, path: str) -> Any:
        def handler(request: SimpleHTTPRequestHandler) -> None:
            body = self.pages.get(path)
            if body is None:
                status, headers, payload = 404, {"Content-Type": "text/html"}, b"gone"
            else:
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                if request.headers.get("If-None-Match") == etag:
                    status, headers, payload = 304, {"ETag": etag}, b""
                else:
                    headers = {"Content-Type": _type(path), "ETag": etag}
                    status, payload = 200, body
            with self.lock:
                self.hits.append((path, status))
            request.send_response(status)
            for name, value in headers.items():
                request.send_header(name, value)
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)

        return handler


def _type(path: str) -> str:
    # Served as a download: found to be a PDF by its signature.
    return "application/octet-stream" if path.endswith(".pdf") else "text/html; charset=utf-8"


def _page(sections: dict[str, str]) -> bytes:
    body = "".join(f"<h2>{h}</h2><p>{t}</p>" for h, t in sections.items())
    return f"<html><head><title>Hub guide</title></head><body><main><h1>Hub guide</h1>{body}</main></body></html>".encode()


@pytest.fixture
def mutable_site(tmp_path: Path) -> Iterator[tuple[str, MutableSite]]:
    index = b'<html><body><main><p>Guides for the hub.</p><a href="/hub.html">Hub</a></main></body></html>'
    site = MutableSite(
        pages={"/index.html": index, "/hub.html": _page(SECTIONS), "/manual.pdf": MANUAL}
    )
    routes = {path: site.route(path) for path in site.pages}
    with serve_site(tmp_path, routes=routes) as url:
        yield url, site


async def scrape(system: System, url: str, brand: str = "acme") -> dict[str, Any]:
    response = await system.client.post("/api/v1/scrape", json={"url": url, "brand": brand})
    assert response.status_code == 202, response.text
    return await wait_terminal(system.client, response.json()["task_id"])


async def test_pdf_manual_is_answered_and_cited_with_its_page(
    system: System, mutable_site: tuple[str, MutableSite]
) -> None:
    base, _ = mutable_site
    record = await scrape(system, f"{base}/manual.pdf", brand="routers")
    assert record["status"] == "succeeded", record
    assert record["result"]["chunks_indexed"] == 3

    response = await system.client.post(
        "/api/v1/query",
        json={"question": "How long do I hold the reset button to restore factory settings?",
              "brand": "routers"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    answer = response.json()
    top = answer["sources"][0]
    assert top["url"] == f"{base}/manual.pdf#page=2"
    assert top["title"] == "Acme X1 Router manual"
    assert "12 seconds" in answer["answer"]
    assert "[1]" in answer["answer"]


async def test_rescrapes_embed_only_what_changed_and_drop_removed_pages(
    system: System, mutable_site: tuple[str, MutableSite]
) -> None:
    base, site = mutable_site
    url = f"{base}/hub.html"
    store = system.knowledge.store

    first = await scrape(system, url)
    assert first["status"] == "succeeded", first
    assert first["result"] | {"url": None} == {
        "url": None, "chunks_indexed": 3, "embedded": 3, "new": 3, "changed": 0,
        "unchanged": 0, "removed": 0,
    }  # fmt: skip
    assert store.count("acme") == 3

    # Unchanged: the conditional GET answers 304 and nothing reaches the embedder.
    again = await scrape(system, url)
    assert again["status"] == "succeeded", again
    assert again["result"]["not_modified"] is True
    assert again["result"]["embedded"] == 0
    assert again["result"]["unchanged"] == 3
    assert site.hits[-1] == ("/hub.html", 304)

    # One paragraph edited: only its chunk is embedded again.
    edited = dict(SECTIONS, Pairing=SECTIONS["Pairing"].replace("three seconds", "five seconds"))
    site.pages["/hub.html"] = _page(edited)
    changed = await scrape(system, url)
    assert changed["status"] == "succeeded", changed
    result = changed["result"]
    assert (result["new"], result["changed"], result["unchanged"], result["removed"]) == (
        0,
        1,
        2,
        0,
    )
    assert result["embedded"] == 1
    assert store.count("acme") == 3

    # A section removed: its chunk leaves the index.
    site.pages["/hub.html"] = _page({k: v for k, v in edited.items() if k != "Updating"})
    shorter = await scrape(system, url)
    assert (shorter["result"]["unchanged"], shorter["result"]["removed"]) == (2, 1)
    assert store.count("acme") == 2

    # The page is gone (404): every chunk of it leaves the index.
    site.pages["/hub.html"] = None
    gone = await scrape(system, url)
    assert gone["status"] == "succeeded", gone
    assert gone["result"]["removed"] == 2
    assert gone["result"]["chunks_indexed"] == 0
    assert store.count("acme") == 0

    # Gone and forgotten: asking again is an ordinary 404.
    after = await scrape(system, url)
    assert after["status"] == "failed"
    assert "404" in after["error"]["message"]


async def test_a_recrawl_of_unchanged_pages_embeds_nothing_and_still_follows_links(
    system: System, mutable_site: tuple[str, MutableSite]
) -> None:
    base, site = mutable_site

    async def crawl() -> dict[str, Any]:
        body = {"url": f"{base}/index.html", "brand": "acme", "max_pages": 10}
        response = await system.client.post("/api/v1/crawl", json=body)
        assert response.status_code == 202, response.text
        return await wait_terminal(system.client, response.json()["task_id"])

    first = await crawl()
    assert first["status"] == "succeeded", first
    assert first["result"]["pages_ok"] == 2, first
    second = await crawl()
    assert second["status"] == "succeeded", second
    # Both pages answered 304, and the unchanged index still led to the hub page.
    assert second["result"]["pages_ok"] == 2, second
    assert second["result"]["chunks_indexed"] == first["result"]["chunks_indexed"]
    assert sorted(site.hits[-2:]) == [("/hub.html", 304), ("/index.html", 304)]
