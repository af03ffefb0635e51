"""Browser rendering: which pages render=auto sends to the browser, and the pool's throughput.

Decisions (`shells.assess`, as the parsing workers make them): over the PostgreSQL 15 manual
(Debian's postgresql-doc-15), as shipped and with an analytics script added to every page
(as most documentation sites carry one: a script alone must not send a page to the browser),
and over tests/portals (framework shells that must render, server-rendered pages that must
not). The goal for the manual is none.

Throughput (unless `--decisions-only`): pages/s rendering JavaScript pages with reused
pages vs a new page per URL. A local site of JavaScript-only pages (text inserted by a shared script after load, plus a
fetch() of JSON) is served on 127.0.0.1. Each mode renders the same URLs through
`Renderer` (every browser request through the SSRF guard, as in production) with
`--concurrency` renders at once:

- reused: `--concurrency` long-lived pages (the pool's default behaviour);
- new page per URL: `page_uses=1`, so every render opens (and closes) a fresh context + page.

The browser is launched before timing starts in both modes.

    uv run python bench/render.py [--pages 200] [--concurrency 4] [--chromium /usr/bin/chromium]
        [--decisions-only]
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
from helpline.common.guard import AllowList
from helpline.common.messages import utcnow
from helpline.scraper.browser import BrowserOptions, BrowserPool
from helpline.scraper.extract import parse_html
from helpline.scraper.fetch import FetchResult
from helpline.scraper.render import Renderer, visible_text_length
from helpline.scraper.shells import assess
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


MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
PORTALS = Path(__file__).resolve().parent.parent / "tests" / "portals"
ANALYTICS = '<script async src="/js/analytics.js"></script>'


def decisions(min_text_chars: int) -> None:
    """How many pages render=auto would render, and what judging a page costs."""
    manual = sorted(MANUAL.glob("*.html"))
    if not manual:
        print(f"no manual at {MANUAL} (Debian's postgresql-doc-15): skipped")
    rendered: dict[str, list[str]] = {"as shipped": [], "with a script added": []}
    # The rule before: a script and under `min_text_chars` of visible text, frame included.
    before = {"as shipped": 0, "with a script added": 0}
    spent = 0.0
    for path in manual:
        html = path.read_text(errors="replace")
        with_script = html.replace("</head>", f"{ANALYTICS}</head>", 1)
        for name, text in (("as shipped", html), ("with a script added", with_script)):
            root = parse_html(text)
            started = time.perf_counter()
            verdict = assess(root, min_text_chars)
            spent += time.perf_counter() - started
            if verdict.render:
                rendered[name].append(f"{path.name} ({'; '.join(verdict.reasons())})")
            before[name] += "<script" in text and visible_text_length(text) < min_text_chars
    for name, pages in rendered.items():
        print(
            f"PostgreSQL 15 manual, {name}: {len(pages)} of {len(manual)} pages rendered "
            f"(visible-text rule before: {before[name]})"
            + (f": {', '.join(pages[:10])}" if pages else "")
        )
    if manual:
        print(
            f"judging a page (its tree parsed already): {spent * 1000 / (2 * len(manual)):.2f} ms"
        )
    shells = plain = shells_before = 0
    for path in sorted(PORTALS.glob("*.html")):
        html = path.read_text()
        verdict = assess(parse_html(html), min_text_chars)
        is_shell = path.name.startswith("shell-")
        shells += is_shell and verdict.render
        plain += not is_shell and verdict.render
        shells_before += is_shell and visible_text_length(html) < min_text_chars
        print(
            f"  {path.name}: {'rendered' if verdict.render else 'not rendered'} {verdict.reasons()}"
        )
    total_shells = len(list(PORTALS.glob("shell-*.html")))
    total_plain = len(list(PORTALS.glob("plain-*.html")))
    print(
        f"tests/portals: {shells} of {total_shells} framework shells rendered (visible-text "
        f"rule before: {shells_before}), {plain} of {total_plain} server-rendered pages with "
        "scripts rendered"
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
    parser.add_argument("--decisions-only", action="store_true")
    args = parser.parse_args()
    if args.decisions_only:
        printed = capture("render")
        decisions(BrowserOptions().min_text_chars)
        printed.save()
        return
    with tempfile.TemporaryDirectory() as tmp:
        build_site(Path(tmp), args.pages)
        with serve_site(Path(tmp)) as base:
            printed = capture("render")
            decisions(BrowserOptions().min_text_chars)
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
