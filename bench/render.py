"""Browser pool throughput: pages/s rendering JavaScript pages with reused pages vs a new page per URL.

A local site of JavaScript-only pages (text inserted by a shared script after load, plus a
fetch() of JSON) is served on 127.0.0.1. Each mode renders the same URLs through
`Renderer` (every browser request through the SSRF guard, as in production) with
`--concurrency` renders at once:

- reused: `--concurrency` long-lived pages (the pool's default behaviour);
- new page per URL: `page_uses=1`, so every render opens (and closes) a fresh context + page.

The browser is launched before timing starts in both modes.

    uv run python bench/render.py [--pages 200] [--concurrency 4] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from results import capture

from helpline.common.breaker import BreakerPolicy, CircuitBreaker
from helpline.common.messages import utcnow
from helpline.scraper.browser import BrowserOptions, BrowserPool
from helpline.scraper.fetch import FetchResult
from helpline.scraper.guard import AllowList
from helpline.scraper.render import Renderer
from helpline.testing import serve_site

APP_JS = """
window.addEventListener("load", async () => {
  const app = document.getElementById("app");
  const data = await (await fetch(app.dataset.src)).json();
  app.innerHTML = "<h1>" + data.title + "</h1>" + data.paragraphs.map(p => "<p>" + p + "</p>").join("");
});
"""


def build_site(root: Path, count: int) -> None:
    (root / "app.js").write_text(APP_JS)
    for i in range(count):
        paragraphs = [
            f"Article {i}, step {n}: hold the reset button for {n + 5} seconds, then release it "
            "and wait for the status light to turn green before reconnecting the device."
            for n in range(4)
        ]
        (root / f"data{i}.json").write_text(
            json.dumps({"title": f"Article {i}", "paragraphs": paragraphs})
        )
        (root / f"page{i}.html").write_text(
            f'<html><head><title>Article {i}</title><script src="/app.js"></script></head>'
            f'<body><div id="app" data-src="/data{i}.json">Loading…</div></body></html>'
        )


async def run(
    root: Path, base: str, count: int, concurrency: int, chromium: str, page_uses: int
) -> tuple[float, BrowserPool]:
    pool = BrowserPool(
        AllowList.parse("127.0.0.1"),
        BrowserOptions(
            executable_path=chromium, pages=concurrency, page_uses=page_uses, browser_uses=100_000
        ),
    )
    renderer = Renderer(pool, CircuitBreaker("browser", BreakerPolicy()))
    pages = []
    for i in range(count):
        # What the scraper's HTTP fetch would have handed the renderer.
        html = (root / f"page{i}.html").read_text()
        pages.append(FetchResult(f"{base}/page{i}.html", 200, "text/html", html, {}, utcnow()))
    try:
        await renderer.render(pages[0])  # launch the browser before the clock starts
        queue: asyncio.Queue[FetchResult] = asyncio.Queue()
        for page in pages:
            queue.put_nowait(page)

        async def worker() -> None:
            while not queue.empty():
                page = queue.get_nowait()
                rendered = await renderer.render(page)
                if "status light" not in rendered.text:
                    raise RuntimeError(f"{page.url} rendered without its text")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    return count / elapsed, pool


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build_site(Path(tmp), args.pages)
        with serve_site(Path(tmp)) as base:
            printed = capture("render")
            reused, pool = await run(
                Path(tmp), base, args.pages, args.concurrency, args.chromium, 100_000
            )
            print(
                f"reused pages ({args.concurrency}): {reused:6.1f} pages/s "
                f"({pool.pages_opened} pages opened for {pool.renders} renders, {pool.launches} browser launches)"
            )
            fresh, pool = await run(Path(tmp), base, args.pages, args.concurrency, args.chromium, 1)
            print(
                f"new page per URL:   {fresh:6.1f} pages/s "
                f"({pool.pages_opened} pages opened for {pool.renders} renders, {pool.launches} browser launches)"
            )
            print(f"reuse speed-up: {reused / fresh:.2f}x")
            printed.save()


if __name__ == "__main__":
    asyncio.run(main())
