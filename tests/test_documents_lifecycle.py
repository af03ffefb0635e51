"""Documents, sources and brands taken out of the index (issue 19): a document's Markdown
and lineage, deleting a document, a source's pages and a brand, each counted in the store,
and the next answers no longer citing them. One system and one copy of the site (which
tests change on disk) for the module; each test its own brand."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import SITE, System, drop_streams, start_system, stop_system
from e2e_helpers import wait_terminal
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_auth import make_key

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.common.messages import LINEAGE
from helpline.gateway.freshness import refresh_task_id
from helpline.testing import bearer, serve_site

pytestmark = pytest.mark.asyncio(loop_scope="module")

GUIDE = """<!doctype html><html><head><title>Port guide</title></head><body><main>
<h1>Port guide</h1>
<h2>Opening a port</h2>
<p>Port forwarding sends traffic from the internet to one device of your network.</p>
<ol><li>Open Settings</li><li>Choose Firewall, then Port forwarding</li></ol>
<h2>Well-known ports</h2>
<table><tr><th>Port</th><th>Use</th></tr><tr><td>22</td><td>SSH</td></tr>
<tr><td>443</td><td>HTTPS</td></tr></table>
<h2>Resetting the rules</h2>
<p>The command below clears every forwarding rule of the router.</p>
<pre><code>router firewall reset --all</code></pre>
</main></body></html>
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A copy of the test site (tests change it), with a guide page of lists, a table, code."""
    root = tmp_path_factory.mktemp("lifecycle") / "site"
    shutil.copytree(SITE, root)
    (root / "guide.html").write_text(GUIDE)
    with serve_site(root) as url:
        yield url, root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(
    nats_server: NatsServer,
    tmp_path_factory: pytest.TempPathFactory,
    model: Embedder,
    spans: InMemorySpanExporter,
) -> AsyncIterator[System]:
    """The system, traced (a lineage step names its trace)."""
    prefix = "tlife" + str(time.monotonic_ns())[-8:]
    system = await start_system(
        nats_server.url,
        prefix,
        Path(tmp_path_factory.mktemp("lifecycle-data")),
        model,
        min_refresh_s=1,
        maintenance_sources_every_s=0.2,
    )
    try:
        yield system
    finally:
        await stop_system(system)
        await asyncio.to_thread(drop_streams, nats_server.url, prefix)


async def scrape(system: System, url: str, brand: str) -> dict[str, Any]:
    response = await system.client.post("/api/v1/scrape", json={"url": url, "brand": brand})
    assert response.status_code == 202, response.text
    record = await wait_terminal(system.client, response.json()["task_id"], timeout_s=60)
    assert record["status"] == "succeeded", record
    return record


async def documents(system: System, brand: str) -> list[dict[str, Any]]:
    response = await system.client.get("/api/v1/documents", params={"brand": brand, "limit": 1000})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def cited(system: System, question: str, brand: str) -> list[str]:
    response = await system.client.post(
        "/api/v1/query", json={"question": question, "brand": brand}
    )
    assert response.status_code == 200, response.text
    return [s["url"] for s in response.json()["sources"]]


async def test_a_document_shows_its_markdown_and_lineage_and_leaves_the_index_when_deleted(
    shared: System, site: tuple[str, Path]
) -> None:
    base, _ = site
    client = shared.client
    guide_url = f"{base}/guide.html"
    scraped = await scrape(shared, guide_url, "lin")
    await scrape(shared, f"{base}/config/firewall.html", "lin")
    listed = await documents(shared, "lin")
    assert sorted(d["url"] for d in listed) == [f"{base}/config/firewall.html", guide_url]
    guide = next(d for d in listed if d["url"] == guide_url)
    assert guide["misses"] == 0
    # Each page's content hash: sha256 hex, one per content.
    hashes = [d["content_hash"] for d in listed]
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in hashes), hashes
    assert len(set(hashes)) == 2

    detail = (await client.get(f"/api/v1/documents/{guide['id']}")).json()
    assert detail["id"] == guide["id"]
    assert detail["content_hash"] == guide["content_hash"]
    assert detail["chunks"] == guide["chunks"] >= 1
    markdown = detail["markdown"]
    assert markdown.startswith("# Port guide\n")
    assert "## Opening a port\n" in markdown
    assert "1. Open Settings\n2. Choose Firewall, then Port forwarding" in markdown
    assert "| Port | Use |\n| --- | --- |\n| 22 | SSH |\n| 443 | HTTPS |" in markdown
    assert "```\nrouter firewall reset --all\n```" in markdown

    # Lineage: the scraper's three steps under the scrape, the embedder's two under its
    # embed task, in order, each timed.
    lineage = detail["lineage"]
    assert [s["step"] for s in lineage] == list(LINEAGE)
    assert {s["task_id"] for s in lineage[:3]} == {scraped["task_id"]}
    embed_ids = {s["task_id"] for s in lineage[3:]}
    assert len(embed_ids) == 1
    assert embed_ids != {scraped["task_id"]}
    times = [s["at"] for s in lineage]
    assert times == sorted(times)
    assert all(s["duration_ms"] >= 0 for s in lineage)
    assert lineage[0]["duration_ms"] > 0  # a real fetch
    assert detail["indexed_at"] >= lineage[-1]["at"]
    assert detail["misses"] == 0
    # Each step names its trace: the scrape's for the scraper's steps (the embedder's task
    # continues the trace its batch was published in).
    assert scraped["trace_id"]
    assert {s["trace_id"] for s in lineage[:3]} == {scraped["trace_id"]}
    assert all(s["trace_id"] for s in lineage[3:])

    # By URL, as requested; bad and unknown URLs.
    by_url = await client.get("/api/v1/documents/by-url", params={"url": guide_url})
    assert by_url.status_code == 200, by_url.text
    assert by_url.json()["id"] == guide["id"]
    bad = await client.get("/api/v1/documents/by-url", params={"url": "ftp://x"})
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["url"]
    unknown = await client.get("/api/v1/documents/by-url", params={"url": f"{base}/nope.html"})
    assert unknown.status_code == 404
    assert (await client.get("/api/v1/documents/0123")).status_code == 404

    # The guide answers a question (and the answer is cached).
    question = "Which command clears every forwarding rule?"
    assert guide_url in await cited(shared, question, "lin")

    # Who may delete: not a query-only key, not another brand's key.
    reader = bearer(await make_key(client, scopes=["query"]))
    assert (
        await client.delete(f"/api/v1/documents/{guide['id']}", headers=reader)
    ).status_code == 403
    other = bearer(await make_key(client, scopes=["query", "submit"], brands=["globex"]))
    assert (
        await client.delete(f"/api/v1/documents/{guide['id']}", headers=other)
    ).status_code == 404
    assert (await client.get(f"/api/v1/documents/{guide['id']}", headers=other)).status_code == 404

    before = shared.knowledge.store.count("lin")
    deleted = await client.delete(f"/api/v1/documents/{guide['id']}")
    assert deleted.status_code == 200, deleted.text
    body = deleted.json()
    assert body["status"] == "removed"
    assert body["chunks_removed"] == guide["chunks"]
    assert shared.knowledge.store.count("lin") == before - guide["chunks"]
    assert (await client.get(f"/api/v1/documents/{guide['id']}")).status_code == 404
    assert [d["url"] for d in await documents(shared, "lin")] == [f"{base}/config/firewall.html"]
    # Not served from the cache: the next answer no longer cites it.
    assert guide_url not in await cited(shared, question, "lin")
    assert (await client.delete(f"/api/v1/documents/{guide['id']}")).status_code == 404


async def crawled_source(system: System, url: str, brand: str, **options: Any) -> dict[str, Any]:
    """A new source, once the schedule's first crawl of it succeeded."""
    made = await system.client.post(
        "/api/v1/sources", json={"url": url, "brand": brand, "refresh_s": 3600, **options}
    )
    assert made.status_code == 201, made.text
    source_url = f"/api/v1/sources/{made.json()['id']}"
    deadline = time.monotonic() + 60
    while True:
        source: dict[str, Any] = (await system.client.get(source_url)).json()
        last = source["last_crawl"]
        if last and last["status"] == "succeeded":
            return source
        assert last is None or last["status"] not in ("failed", "cancelled", "expired"), source
        assert time.monotonic() < deadline, source
        await asyncio.sleep(0.1)


async def test_deleting_a_source_removes_exactly_its_pages_unless_kept(
    shared: System, site: tuple[str, Path]
) -> None:
    base, _ = site
    client = shared.client
    config = await crawled_source(shared, f"{base}/config/firewall.html", "src")
    leds = await crawled_source(shared, f"{base}/troubleshooting/leds.html", "src")
    await scrape(shared, f"{base}/privacy.html", "src")  # of the brand, of no source
    listed = await documents(shared, "src")
    in_config = [d for d in listed if d["url"].startswith(f"{base}/config/")]
    in_leds = [d for d in listed if d["url"].startswith(f"{base}/troubleshooting/")]
    assert len(in_config) == 2  # firewall and wifi
    assert in_leds
    shown = {s["id"]: s for s in (await client.get("/api/v1/sources")).json()["items"]}
    assert shown[config["id"]]["documents"] == 2
    assert shown[leds["id"]]["documents"] == len(in_leds)
    one = (await client.get(f"/api/v1/sources/{config['id']}")).json()
    assert one["documents"] == 2
    question = "What does error FW-409 mean?"
    assert f"{base}/config/firewall.html" in await cited(shared, question, "src")

    # Kept: only the crawling stops.
    count = shared.knowledge.store.count("src")
    kept = await client.delete(f"/api/v1/sources/{leds['id']}", params={"keep_documents": True})
    assert kept.status_code == 200, kept.text
    assert kept.json() == {
        "id": leds["id"],
        "documents_removed": 0,
        "chunks_removed": 0,
        "documents_kept": len(in_leds),
        "pending": [],
    }
    assert shared.knowledge.store.count("src") == count
    assert (await client.get(f"/api/v1/sources/{leds['id']}")).status_code == 404

    # Removed: exactly its pages' chunks, nothing of the brand's other pages.
    chunks = sum(d["chunks"] for d in in_config)
    deleted = await client.delete(f"/api/v1/sources/{config['id']}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "id": config["id"],
        "documents_removed": 2,
        "chunks_removed": chunks,
        "documents_kept": 0,
        "pending": [],
    }
    assert shared.knowledge.store.count("src") == count - chunks
    left = {d["url"] for d in await documents(shared, "src")}
    assert left == {d["url"] for d in listed} - {d["url"] for d in in_config}
    assert not any("/config/" in url for url in await cited(shared, question, "src"))


def page(title: str, body: str) -> str:
    return f"<!doctype html><html><head><title>{title}</title></head><body><main><h1>{title}</h1>{body}</main></body></html>"


def write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))  # Last-Modified has whole seconds: set it apart


def index(*pages: str) -> str:
    links = "".join(f'<li><a href="{p}.html">{p}</a></li>' for p in pages)
    return page("Fan manual", f"<p>Everything about the X300 fan.</p><ul>{links}</ul>")


async def test_a_source_stays_fresh_changed_pages_answer_and_missed_pages_leave_after_two_crawls(
    shared: System, tmp_path: Path
) -> None:
    client = shared.client
    root = tmp_path / "fan"
    root.mkdir()
    old = time.time() - 100
    write(root / "index.html", index("a", "b", "c"), old)
    write(
        root / "a.html",
        page("Errors", "<p>Error FW-777 means the fan is blocked by dust.</p>"),
        old,
    )
    write(root / "b.html", page("Noise", "<p>A humming fan needs new bearings soon.</p>"), old)
    write(root / "c.html", page("Speed", "<p>The fan spins at 1200 turns a minute.</p>"), old)
    with serve_site(root) as base:
        made = await client.post(
            "/api/v1/sources",
            json={"url": f"{base}/index.html", "brand": "fresh", "refresh_s": 2},
        )
        assert made.status_code == 201, made.text
        source_url = f"/api/v1/sources/{made.json()['id']}"
        sweeps: dict[str, dict[str, Any]] = {}

        async def next_sweep(after: str | None) -> dict[str, Any]:
            """The first swept run after run `after` (every sweep seen is kept in `sweeps`)."""
            deadline = time.monotonic() + 30
            while True:
                last = (await client.get(source_url)).json()["last_crawl"]
                if last and last["swept_at"]:
                    sweeps[last["task_id"]] = last
                    if last["task_id"] != after:
                        return dict(last)
                assert time.monotonic() < deadline, last
                await asyncio.sleep(0.05)

        first = await next_sweep(None)
        assert first["status"] == "succeeded", first
        listed = await documents(shared, "fresh")
        assert sorted(d["url"] for d in listed) == [
            f"{base}/{p}.html" for p in ("a", "b", "c", "index")
        ]
        count = shared.knowledge.store.count("fresh")
        assert count == sum(d["chunks"] for d in listed)

        # Nothing changed: the re-crawl embeds nothing (304s), every page unchanged.
        second = await next_sweep(first["task_id"])
        assert second["pages_unchanged"] == 4, second
        assert (second["pages_missed"], second["pages_removed"]) == (0, 0)
        again = await documents(shared, "fresh")
        assert [(d["id"], d["indexed_at"], d["content_hash"]) for d in again] == [
            (d["id"], d["indexed_at"], d["content_hash"]) for d in listed
        ]
        assert all(d["content_hash"] for d in again)
        assert shared.knowledge.store.count("fresh") == count

        # The site changes: a page edited, one deleted (404), one no longer linked, one added.
        now = time.time() + 5
        write(
            root / "a.html",
            page("Errors", "<p>Error FW-777 means the air filter is clogged.</p>"),
            now,
        )
        (root / "b.html").unlink()
        write(root / "d.html", page("Mounting", "<p>Mount the fan with four M4 screws.</p>"), now)
        write(root / "index.html", index("a", "b", "d"), now)
        edited = time.monotonic()

        # The next answer quotes the new text: no request of the test's but the question.
        while True:
            answer = (
                await client.post(
                    "/api/v1/query",
                    json={"question": "What does error FW-777 mean?", "brand": "fresh"},
                )
            ).json()
            if "air filter" in answer["answer"]:
                break
            assert "blocked by dust" in answer["answer"], answer
            assert time.monotonic() - edited < 30, answer
            await asyncio.sleep(0.2)

        # b and c: missed once (still listed, misses 1), then removed at the second miss.
        seen_misses: dict[str, set[int]] = {"b": set(), "c": set()}
        while True:
            current = {d["url"]: d for d in await documents(shared, "fresh")}
            for name, misses in seen_misses.items():
                listed_page = current.get(f"{base}/{name}.html")
                if listed_page is not None:
                    misses.add(listed_page["misses"])  # the listing shows it too
                    detail = await client.get(f"/api/v1/documents/{listed_page['id']}")
                    if detail.status_code == 200:  # else removed since it was listed
                        misses.add(detail.json()["misses"])
            if not any(f"{base}/{n}.html" in current for n in seen_misses):
                break
            assert time.monotonic() - edited < 40, (current.keys(), seen_misses)
            await asyncio.sleep(0.05)
        # Listed with one miss (a 404 counts at the crawl, a missing link at its sweep; a
        # second 404 may show before the sweep removes the page).
        for misses in seen_misses.values():
            assert 1 in misses, seen_misses
            assert misses <= {0, 1, 2}, seen_misses
        assert sorted(current) == [f"{base}/{p}.html" for p in ("a", "d", "index")]
        # The edited page's content hash moved with its text.
        before = {d["url"]: d["content_hash"] for d in listed}
        assert current[f"{base}/a.html"]["content_hash"] != before[f"{base}/a.html"]
        last = await next_sweep(None)
        assert sum(s["pages_removed"] or 0 for s in sweeps.values()) == 2, sweeps
        assert shared.knowledge.store.count("fresh") == sum(d["chunks"] for d in current.values())
        answer = (
            await client.post(
                "/api/v1/query", json={"question": "How fast does the fan spin?", "brand": "fresh"}
            )
        ).json()
        assert f"{base}/c.html" not in [s["url"] for s in answer["sources"]]
        assert last["status"] == "succeeded"
        assert (await client.delete(source_url, params={"keep_documents": True})).status_code == 200


async def test_brands_are_listed_and_one_is_taken_out_whole(
    shared: System, site: tuple[str, Path]
) -> None:
    base, _ = site
    client = shared.client
    await scrape(shared, f"{base}/config/firewall.html", "gone")
    await scrape(shared, f"{base}/config/wifi.html", "gone")
    await scrape(shared, f"{base}/config/firewall.html", "stay")
    await crawled_source(shared, f"{base}/privacy.html", "gone", max_depth=0)
    text = "Hold the reset button for ten seconds to restore the factory settings."
    embedded = await client.post(
        "/api/v1/embed", json={"documents": [{"text": text, "brand": "gone"}]}
    )
    assert embedded.status_code == 202, embedded.text
    assert (await wait_terminal(client, embedded.json()["task_id"]))["status"] == "succeeded"

    pages = await documents(shared, "gone")
    listed = {b["brand"]: b for b in (await client.get("/api/v1/brands")).json()["items"]}
    assert listed["gone"]["documents"] == len(pages) == 3
    assert listed["gone"]["chunks"] == sum(d["chunks"] for d in pages)
    assert listed["gone"]["sources"] == 1
    assert listed["gone"]["last_indexed_at"] == max(d["indexed_at"] for d in pages)
    assert listed["stay"]["documents"] == 1
    assert listed["stay"]["sources"] == 0
    stay_key = bearer(await make_key(client, scopes=["query"], brands=["stay"]))
    seen = (await client.get("/api/v1/brands", headers=stay_key)).json()["items"]
    assert [b["brand"] for b in seen] == ["stay"]

    question = "How do I restore the factory settings?"
    assert await cited(shared, question, "gone")  # the text sent to /embed answers it
    submitter = bearer(await make_key(client, scopes=["query", "submit"]))
    assert (await client.delete("/api/v1/brands/gone", headers=submitter)).status_code == 403
    bad = await client.delete("/api/v1/brands/bad*name")
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["brand"]

    gone_points = shared.knowledge.store.count("gone")
    stay_points = shared.knowledge.store.count("stay")
    assert gone_points > listed["gone"]["chunks"]  # the embedded text has no page
    deleted = await client.delete("/api/v1/brands/gone")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "brand": "gone",
        "sources_removed": 1,
        "documents_removed": 3,
        "chunks_removed": gone_points,
        "pending": [],
    }
    assert shared.knowledge.store.count("gone") == 0
    assert shared.knowledge.store.count("stay") == stay_points
    assert await documents(shared, "gone") == []
    assert (await client.get("/api/v1/sources", params={"brand": "gone"})).json()["items"] == []
    brands = [b["brand"] for b in (await client.get("/api/v1/brands")).json()["items"]]
    assert "gone" not in brands
    assert "stay" in brands
    assert await cited(shared, question, "gone") == []
    assert (await client.delete("/api/v1/brands/gone")).status_code == 404


async def test_a_cited_stale_page_is_scraped_again_once_however_many_answers_cite_it(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder, docs_site: str
) -> None:
    period = 4.0
    stack = contextlib.ExitStack()
    system = await start_system(nats_server.url, prefix, tmp_path, model, stale_after_s=period)
    client = system.client
    url = f"{docs_site}/config/firewall.html"
    lamp_dir = tmp_path / "lamp"
    lamp_dir.mkdir()
    (lamp_dir / "x9.html").write_text(
        page("X9 lamp", "<p>The X9 lamp blinks green while its battery charges.</p>")
    )
    try:
        lamp_site = stack.enter_context(serve_site(lamp_dir))
        lamp_url = f"{lamp_site}/x9.html"
        await scrape(system, lamp_url, "lamp")
        first = await scrape(system, url, "acme")
        question = "What does error FW-409 mean?"
        answer = (
            await client.post("/api/v1/query", json={"question": question, "brand": "acme"})
        ).json()
        cited_page = next(s for s in answer["sources"] if s["url"] == url)
        (document,) = [d for d in await documents(system, "acme") if d["url"] == url]
        assert cited_page["fetched_at"] == document["fetched_at"]

        async def scrapes() -> list[dict[str, Any]]:
            listed = (await client.get("/api/v1/tasks", params={"kind": "scrape"})).json()
            items = listed["items"] if isinstance(listed, dict) else listed
            return [t for t in items if t["task_id"] != first["task_id"] and t["brand"] == "acme"]

        assert await scrapes() == []  # fresh: nothing queued

        # Stale now; at the start of a period, many answers (cached and not) cite it.
        stale_from = max(time.time(), first_fetch(document) + period)
        await asyncio.sleep(math.ceil(stale_from / period) * period + 0.05 - time.time())
        # The lamp's page is gone from its site: the re-scrape its citation queues removes it.
        (lamp_dir / "x9.html").unlink()
        lamp_question = {"question": "Why does the X9 lamp blink green?", "brand": "lamp"}
        assert lamp_url in [
            s["url"]
            for s in (await client.post("/api/v1/query", json=lamp_question)).json()["sources"]
        ]
        asked_at = time.time()
        questions = [question, question.lower(), "FW-409?", "error FW-409"]
        replies = await asyncio.gather(
            *(
                client.post(
                    "/api/v1/query",
                    json={"question": q, "brand": "acme", "cache": i % 2 == 0},
                )
                for i in range(3)
                for q in questions
            )
        )
        assert time.time() - asked_at < period - 0.3  # all within the period
        for reply in replies:
            assert reply.status_code == 200, reply.text
            assert url in [s["url"] for s in reply.json()["sources"]]
        expected = refresh_task_id("acme", url, period, asked_at)
        record = await wait_terminal(client, expected, timeout_s=30)
        assert record["status"] == "succeeded", record
        assert record["priority"] == "high"
        assert [t["task_id"] for t in await scrapes()] == [expected]
        gone = refresh_task_id("lamp", lamp_url, period, asked_at)
        assert (await wait_terminal(client, gone, timeout_s=30))["status"] == "succeeded"
        assert await documents(system, "lamp") == []
        assert system.knowledge.store.count("lamp") == 0
        reply = (await client.post("/api/v1/query", json=lamp_question)).json()
        assert lamp_url not in [s["url"] for s in reply["sources"]]

        # Still stale in the next period (that scrape was a 304: the cited version is the
        # same): a streamed answer queues that period's one.
        await asyncio.sleep(math.ceil(time.time() / period) * period + 0.05 - time.time())
        asked_at = time.time()
        streamed = await client.post(
            "/api/v1/query",
            json={"question": question, "brand": "acme", "cache": False, "stream": True},
        )
        assert streamed.status_code == 200
        assert f'"fetched_at":"{document["fetched_at"]}"' in streamed.text
        following = refresh_task_id("acme", url, period, asked_at)
        assert following != expected
        assert (await wait_terminal(client, following, timeout_s=30))["status"] == "succeeded"
        assert sorted(t["task_id"] for t in await scrapes()) == sorted([expected, following])
    finally:
        stack.close()
        await stop_system(system)


def first_fetch(document: dict[str, Any]) -> float:
    return datetime.fromisoformat(document["fetched_at"].replace("Z", "+00:00")).timestamp()
