"""Browser rendering: which pages need a browser, and rendering them in the pool's pages.

A page is fetched over HTTP first; `needs_browser` decides whether it goes to the browser
(`auto`: pages with scripts whose main content is thin or that show the signs of a
client-rendered shell, `shells.py`; the scraper asks that of the tree its parsing workers
extract anyway). `Renderer` serves the fetched HTML to a page of the `browser.BrowserPool`
as its document, waits for it to settle (its main content filled in), and returns the
rendered DOM, behind the browser's circuit breaker. The pool's requests go through the
SSRF guard (`routing.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from helpline.common.breaker import CircuitBreaker
from helpline.common.errors import BlockedAddress, Permanent, Retryable
from helpline.common.messages import RenderMode, utcnow
from helpline.scraper.browser import BrowserPool, Slot, first_line
from helpline.scraper.extract import parse_html
from helpline.scraper.fetch import FetchResult
from helpline.scraper.shells import assess
from helpline.scraper.spans import step, traced_url

_SCRIPT = re.compile(r"<script\b", re.IGNORECASE)
_INVISIBLE = ("script", "style", "noscript", "template")
# Whether the main content (as `shells.main_text_chars` reads it) has `n` characters yet.
_MAIN_TEXT_AT_LEAST = """n => {
  const scope = document.querySelector("main, [role=main]") || document.querySelector("article")
    || document.body;
  if (!scope) return false;
  const tags = new Set(["SCRIPT", "STYLE", "NOSCRIPT", "TEMPLATE", "NAV", "HEADER", "FOOTER",
    "ASIDE"]);
  const roles = new Set(["navigation", "banner", "contentinfo", "complementary", "search"]);
  const words = /(?:^|[\\s_-])(?:nav|navbar|navigation|navmenu|menu|menubar|sidebar|sidenav|header|footer|topbar|masthead|breadcrumbs?)(?:$|[\\s_-])/i;
  const framed = el => {
    for (; el && el !== scope.parentElement; el = el.parentElement) {
      if (tags.has(el.tagName) || roles.has(el.getAttribute("role"))
          || words.test((el.id || "") + " " + (el.getAttribute("class") || ""))) return true;
    }
    return false;
  };
  const walker = document.createTreeWalker(scope, NodeFilter.SHOW_TEXT);
  let chars = 0;
  while (walker.nextNode()) {
    if (!framed(walker.currentNode.parentElement)) {
      chars += walker.currentNode.data.replace(/\\s+/g, " ").trim().length;
      if (chars >= n) return true;
    }
  }
  return false;
}"""


class _BrowserCrashed(Exception):
    """The browser or the page died under a render."""


def visible_text_length(html: str) -> int:
    """Characters of text a reader would see in `html` without running its scripts."""
    try:
        # Parsed as bytes: a str that declares its encoding (<?xml ... encoding=...?>) fails.
        root = parse_html(html)
    except Permanent:
        return 0
    for el in root.iter(*_INVISIBLE):
        el.drop_tree()
    return len(" ".join(root.text_content().split()))


def is_html(page: FetchResult) -> bool:
    return page.content_type in ("text/html", "application/xhtml+xml")


def needs_browser(page: FetchResult, mode: RenderMode, min_text_chars: int) -> bool:
    """Whether a fetched page goes to the browser: `auto` renders shells (`shells.py`)."""
    if mode is RenderMode.NEVER or not is_html(page):
        return False
    if mode is RenderMode.ALWAYS:
        return True
    if not _SCRIPT.search(page.text):
        return False
    try:
        root = parse_html(page.text)
    except Permanent:
        return False
    return assess(root, min_text_chars).render


class Renderer:
    """Renders pages that need a browser, behind the browser's circuit breaker."""

    def __init__(self, pool: BrowserPool, breaker: CircuitBreaker) -> None:
        self.pool = pool
        self.breaker = breaker

    async def maybe_render(self, page: FetchResult, mode: RenderMode) -> FetchResult:
        """The page as a browser shows it when `mode` says it needs one, else `page` itself."""
        if not needs_browser(page, mode, self.pool.options.min_text_chars):
            return page
        return await self.render(page)

    async def render(self, fetched: FetchResult) -> FetchResult:
        """Load `fetched` (its HTML is served to the browser as is) and return the rendered DOM."""
        with step("render", attributes={"url.full": traced_url(fetched.url)}):
            html, url = await self._guarded_render(fetched)
        return FetchResult(
            url=url,
            status=fetched.status,
            content_type="text/html",
            text=html,
            headers=fetched.headers,
            fetched_at=utcnow(),
        )

    async def _guarded_render(self, fetched: FetchResult) -> tuple[str, str]:
        self.breaker.before_call()
        crashed = False
        try:
            return await self._render(fetched)
        except _BrowserCrashed as exc:
            crashed = True
            self.breaker.failed_and_defer(exc)
            raise Retryable(f"the browser failed rendering {fetched.url}") from exc
        except (TimeoutError, PlaywrightTimeoutError) as exc:
            raise Retryable(f"timed out rendering {fetched.url}") from exc
        except PlaywrightError as exc:
            raise Retryable(f"could not render {fetched.url}: {first_line(exc)}") from exc
        finally:
            # Only a browser that died counts against it: a slow or broken site, a blocked
            # address or a missing browser do not (and a half-open trial must be released).
            if not crashed:
                self.breaker.succeeded()

    async def _render(self, fetched: FetchResult) -> tuple[str, str]:
        options = self.pool.options
        # Waiting for a free page is not part of the render's time: each render is bounded.
        async with self.pool.page() as slot:
            slot.state.preloaded = (
                fetched.url,
                fetched.text.encode("utf-8"),
                "text/html; charset=utf-8",
            )
            try:
                async with asyncio.timeout(options.timeout_s + options.settle_s):
                    await slot.page.goto(fetched.url, wait_until="load")
                    await _settle(slot, options.settle_s, options.min_text_chars)
                    return await slot.page.content(), slot.page.url
            except PlaywrightTimeoutError:
                raise
            except PlaywrightError as exc:
                if slot.state.blocked_navigation:
                    raise BlockedAddress() from exc
                if (
                    slot.page.is_closed()
                    or not slot.context.browser
                    or not slot.context.browser.is_connected()
                ):
                    raise _BrowserCrashed(first_line(exc)) from exc
                raise


async def _settle(slot: Slot, settle_s: float, min_text_chars: int) -> None:
    """Wait (at most `settle_s`) for the page's own requests to finish and its text to appear."""
    deadline = time.monotonic() + settle_s
    state = slot.state
    while time.monotonic() < deadline:
        if state.inflight == 0 and time.monotonic() - state.last_activity >= 0.05:
            break
        await asyncio.sleep(0.02)
    remaining = deadline - time.monotonic()
    if remaining > 0:
        with contextlib.suppress(PlaywrightTimeoutError):
            await slot.page.wait_for_function(
                _MAIN_TEXT_AT_LEAST, arg=min_text_chars, timeout=remaining * 1000, polling=50
            )
