"""Crawl throughput on a real documentation site: our fetch + extract + chunk against Scrapy.

Serves the PostgreSQL 15 manual (Debian's postgresql-doc-15, installed here if missing and
possible) on 127.0.0.1 from a separate process, then, in the same run:

- ours: the scraper's own code path (the guarded `Fetcher`, `parse_page` = trafilatura
  extraction + chunking in `HELPLINE_SCRAPER_EXTRACT_PROCESSES` worker processes), crawling
  from index.html with `--concurrency` fetches in flight, following in-scope links;
- Scrapy (the peer): the same crawl, the same `extract` + `chunk_document` in its parse
  callback, the same links followed, `CONCURRENT_REQUESTS = --concurrency`.

With `--full` it also runs the real system (`helpline up`), crawls the manual through the
API until every page is searchable, and times embedding the same chunks alone.

    uv run python bench/crawl.py [--rounds 1] [--concurrency 16] [--processes N] [--full]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from helpline.common.guard import AllowList
from helpline.common.messages import CrawlScope
from helpline.scraper.fetch import Fetcher
from helpline.scraper.parsing import Parser
from helpline.scraper.urls import in_scope
from helpline.testing import HelplineUp, serve_site_process

sys.path.insert(0, str(Path(__file__).parent))
from query_latency import crawl as crawl_through_api
from query_latency import ensure_manual
from results import capture

MAX_CHARS, OVERLAP = 700, 100


async def ours(base: str, concurrency: int, processes: int, max_pages: int) -> dict[str, Any]:
    """Crawl with the scraper's fetcher and parser; every page fetched, extracted and chunked."""
    root = f"{base}/index.html"
    scope = CrawlScope(root_url=root, max_pages=max_pages, max_depth=100)
    parser = Parser(processes=processes)
    # Start the worker processes (imports included) before the clock starts, as a running
    # scraper has them.
    warm = "<html><body><p>warm up</p></body></html>"
    await asyncio.gather(
        *(parser.parse(root, warm, None, MAX_CHARS, OVERLAP) for _ in range(max(processes, 1) * 2))
    )
    queue: asyncio.Queue[str] = asyncio.Queue()
    queue.put_nowait(root)
    seen = {root}
    texts: list[str] = []
    pages = failed = 0
    async with Fetcher(AllowList.parse("127.0.0.1"), timeout_s=30) as fetcher:

        async def worker() -> None:
            nonlocal pages, failed
            while True:
                url = await queue.get()
                try:
                    page = await fetcher.fetch(url)
                    doc, chunks, _ = await parser.parse(
                        page.url, page.text, page.body if page.is_pdf else None, MAX_CHARS, OVERLAP
                    )
                except Exception:
                    failed += 1
                else:
                    pages += 1
                    texts.extend(c.text for c in chunks)
                    for link in doc.links:
                        if link not in seen and len(seen) < max_pages and in_scope(link, scope):
                            seen.add(link)
                            queue.put_nowait(link)
                finally:
                    queue.task_done()

        started = time.perf_counter()
        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await queue.join()
        elapsed = time.perf_counter() - started
        for task in workers:
            task.cancel()
    parser.close()
    return {
        "pages": pages,
        "failed": failed,
        "chunks": len(texts),
        "seconds": elapsed,
        "texts": texts,
    }


def scrapy_peer(base: str, concurrency: int, max_pages: int) -> None:
    """Runs in a child process (Twisted's reactor cannot be restarted); prints one JSON line."""
    import scrapy
    from scrapy.crawler import CrawlerProcess

    from helpline.common.chunking import chunk_document
    from helpline.scraper.extract import extract

    root = f"{base}/index.html"
    scope = CrawlScope(root_url=root, max_pages=max_pages, max_depth=100)
    stats = {"pages": 0, "chunks": 0, "started": 0.0, "ended": 0.0}
    seen = {root}

    class Manual(scrapy.Spider):  # type: ignore[misc]
        name = "manual"

        async def start(self) -> Any:
            stats["started"] = time.perf_counter()
            yield scrapy.Request(root, callback=self.parse)

        def parse(self, response: Any) -> Any:
            doc = extract(response.text, response.url)
            stats["chunks"] += len(chunk_document(doc, MAX_CHARS, OVERLAP))
            stats["pages"] += 1
            stats["ended"] = time.perf_counter()
            for link in doc.links:
                if link not in seen and len(seen) < max_pages and in_scope(link, scope):
                    seen.add(link)
                    yield scrapy.Request(link, callback=self.parse)

    process = CrawlerProcess(
        settings={
            "LOG_LEVEL": "ERROR",
            "CONCURRENT_REQUESTS": concurrency,
            "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
            "DOWNLOAD_DELAY": 0,
            "ROBOTSTXT_OBEY": False,
            "COOKIES_ENABLED": False,
            "TELNETCONSOLE_ENABLED": False,
            "AUTOTHROTTLE_ENABLED": False,
        }
    )
    process.crawl(Manual)
    process.start()
    # From the first request out to the last page parsed, as for ours.
    stats["seconds"] = stats["ended"] - stats["started"]
    print(json.dumps(stats))


def run_scrapy(base: str, concurrency: int, max_pages: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--scrapy-peer", base, "--concurrency", str(concurrency),
         "--max-pages", str(max_pages)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def per_min(figures: dict[str, Any]) -> float:
    return figures["pages"] / figures["seconds"] * 60


def full_system(base: str, max_pages: int, texts: list[str]) -> None:
    from helpline.common.knowledge import load_model
    from helpline.embedder.settings import EmbedderSettings

    with tempfile.TemporaryDirectory(prefix="helpline-bench-crawl-") as tmp:
        env = {
            "HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1",
            "HELPLINE_SCRAPER_HOST_INTERVAL_S": "0",
            "HELPLINE_LOG_LEVEL": "WARNING",
        }
        with (
            HelplineUp(Path(tmp) / "data", env) as up,
            up.client() as client,
        ):
            print(f"crawl-to-searchable through `helpline up` ({base}) ...", flush=True)
            record, crawl_s = crawl_through_api(client, base, max_pages)
    result = record.get("result") or {}
    pages = result.get("pages_ok", 0)
    # The model as the embedder service loads it (the int8 graph unless
    # HELPLINE_EMBED_INDEX_INT8=false), in its batches.
    settings = EmbedderSettings()
    model = load_model(settings, int8_products=settings.embed_index_int8)
    model.embed(texts[:64])  # warm-up
    started = time.perf_counter()
    model.embed(texts, settings.embed_batch_size)
    embed_s = time.perf_counter() - started
    model.close()
    print(
        f"crawl-to-searchable: {pages} pages, {result.get('chunks_indexed', 0)} chunks in "
        f"{crawl_s:.1f} s ({pages / crawl_s * 60:.0f} pages/min)"
    )
    graph = "int8" if settings.embed_index_int8 else "packaged"
    print(f"embedding the same {len(texts)} chunks alone ({graph} graph): {embed_s:.1f} s")
    print(f"crawl-to-searchable / embedding alone: {crawl_s / embed_s:.2f}x (target <= 1.3x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="ours/Scrapy pairs to run")
    parser.add_argument("--concurrency", type=int, default=16, help="fetches in flight")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="extraction worker processes for ours (0: a thread)")  # fmt: skip
    parser.add_argument("--max-pages", type=int, default=5000)
    parser.add_argument("--full", action="store_true", help="also crawl-to-searchable (minutes)")
    parser.add_argument("--scrapy-peer", metavar="BASE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scrapy_peer:
        scrapy_peer(args.scrapy_peer, args.concurrency, args.max_pages)
        return

    printed = capture("crawl")
    # The manual from its own process, so the server takes no time from the crawlers.
    with serve_site_process(ensure_manual()) as base:
        print(
            f"PostgreSQL 15 manual served at {base}; {os.cpu_count()} cores; "
            f"concurrency {args.concurrency}; our extraction in {args.processes} processes",
            flush=True,
        )
        texts: list[str] = []
        for round_ in range(1, args.rounds + 1):
            mine = asyncio.run(ours(base, args.concurrency, args.processes, args.max_pages))
            texts = mine.pop("texts")
            print(
                f"round {round_} ours   fetch+extract+chunk: {mine['pages']} pages "
                f"({mine['failed']} failed), {mine['chunks']} chunks in {mine['seconds']:.1f} s "
                f"= {per_min(mine):.0f} pages/min",
                flush=True,
            )
            peer = run_scrapy(base, args.concurrency, args.max_pages)
            print(
                f"round {round_} Scrapy fetch+extract+chunk: {peer['pages']} pages, "
                f"{peer['chunks']} chunks in {peer['seconds']:.1f} s = {per_min(peer):.0f} pages/min"
                f"  (ours / Scrapy: {per_min(mine) / per_min(peer):.2f}x)",
                flush=True,
            )
        if args.full:
            full_system(base, args.max_pages, texts)
    printed.save()


if __name__ == "__main__":
    main()
