"""Browser rendering: a bounded pool of reused Chromium pages, every request behind the SSRF guard.

How the browser is kept inside the guard: every request any page, frame or dedicated worker
makes (documents, subresources, fetch/XHR, navigations by script) is intercepted with
`BrowserContext.route` and *fulfilled by us*, fetched through the scraper's own
`GuardedTransport` (the same address check and DNS pinning as HTTP fetches, no redirects
followed: a 3xx goes back to the browser, whose next request is intercepted and checked
again). Chromium itself never opens a connection for a page: it is launched with a proxy
that leads nowhere (`--proxy-server` to a closed loopback port, loopback not exempted), so
whatever slips past interception (preconnects, DNS prefetch) fails closed. WebSockets are
routed and closed, service workers are blocked, WebRTC is switched off.

Processes: one Playwright driver and one Chromium per pool, started on the first render
(a process that never renders never starts a browser). Chromium is its own process group
(Playwright starts it detached); where util-linux `setpriv` exists it is launched with
`--pdeathsig KILL`, so a driver that dies (because the scraper died: the driver exits when
its pipe closes) takes the browser with it. `close()` closes the browser, stops the driver,
then kills whatever is left of the browser's process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import lxml.html
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    Request,
    Route,
    WebSocketRoute,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from helpline.common.breaker import CircuitBreaker
from helpline.common.errors import BlockedAddress, HelplineError, Permanent, Retryable
from helpline.common.messages import RenderMode, utcnow
from helpline.common.processes import (
    find_process_group,
    group_memory_bytes,
    kill_group,
    kill_marked,
    pdeathsig_script,
)
from helpline.scraper.fetch import FetchResult, GuardedTransport
from helpline.scraper.guard import AllowList, resolve_checked

_SCRIPT = re.compile(r"<script\b", re.IGNORECASE)
_INVISIBLE = ("script", "style", "noscript", "template")
# What text extraction never needs; skipping them also keeps the guard's work small.
_SKIPPED_RESOURCES = frozenset({"image", "media", "font"})
_HOP_BY_HOP = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "accept-encoding",
    }
)
# httpx hands us decoded bodies, so the encoding headers no longer describe them.
_DROPPED_RESPONSE_HEADERS = frozenset(
    {"content-encoding", "content-length", "transfer-encoding", "connection", "keep-alive"}
)
_LAUNCH_ARGS = (
    # Anything Chromium would fetch by itself goes to a port where nothing listens.
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--disable-dev-shm-usage",
    "--disable-gpu",
)
_NO_WEBRTC = "delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection;"
_TEXT_AT_LEAST = (
    "n => !!document.body && document.body.innerText.replace(/\\s+/g, ' ').trim().length >= n"
)


class BrowserUnavailable(Permanent):
    """No browser can be started here: pages that need one fail, everything else works."""


class _BrowserCrashed(Exception):
    """The browser or the page died under a render."""


def visible_text_length(html: str) -> int:
    """Characters of text a reader would see in `html` without running its scripts."""
    try:
        root = lxml.html.document_fromstring(html)
    except (ValueError, lxml.etree.ParserError):
        return 0
    for el in root.iter(*_INVISIBLE):
        el.drop_tree()
    return len(" ".join(root.text_content().split()))


def needs_browser(page: FetchResult, mode: RenderMode, min_text_chars: int) -> bool:
    """Whether a fetched page goes to the browser: `auto` renders thin pages that have scripts."""
    if mode is RenderMode.NEVER or page.content_type not in ("text/html", "application/xhtml+xml"):
        return False
    if mode is RenderMode.ALWAYS:
        return True
    if not _SCRIPT.search(page.text):
        return False
    return visible_text_length(page.text) < min_text_chars


@dataclass(frozen=True)
class BrowserOptions:
    executable_path: str = ""
    pages: int = 4
    page_uses: int = 50
    browser_uses: int = 1000
    max_memory_mb: int = 1500
    timeout_s: float = 20.0
    settle_s: float = 2.0
    min_text_chars: int = 200
    max_requests: int = 200
    max_bytes: int = 5_000_000
    user_agent: str = "HelplineBot/0.1 (+https://helpline.example/bot)"


@dataclass
class _RenderState:
    """What one render of one page has seen so far (reset for every render)."""

    preloaded: tuple[str, bytes, str] | None = None
    blocked_navigation: bool = False
    requests: int = 0
    inflight: int = 0
    last_activity: float = field(default_factory=time.monotonic)


@dataclass
class _Slot:
    context: BrowserContext
    page: Page
    generation: int
    state: _RenderState = field(default_factory=_RenderState)
    uses: int = 0


@dataclass
class _BrowserRun:
    browser: Browser
    generation: int
    process_group: int | None
    busy: int = 0
    renders: int = 0
    retiring: bool = False


class BrowserPool:
    """One shared browser and up to `pages` long-lived pages, each in its own context."""

    def __init__(
        self,
        allow: AllowList,
        options: BrowserOptions,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.options = options
        self._allow = allow
        self._client = httpx.AsyncClient(
            transport=transport or GuardedTransport(allow),
            follow_redirects=False,
            timeout=options.timeout_s,
            trust_env=False,
        )
        self._slots = asyncio.Semaphore(options.pages)
        self._idle: list[_Slot] = []
        self._launch_lock = asyncio.Lock()
        self._playwright: Playwright | None = None
        self._run: _BrowserRun | None = None
        self._runs: dict[int, _BrowserRun] = {}
        self._generation = 0
        self._marker = f"--helpline-pool={uuid.uuid4().hex}"
        self._wrapper_dir: str | None = None
        self._closed = False
        # Counters for tests, benchmarks and the heartbeat.
        self.renders = 0
        self.launches = 0
        self.pages_opened = 0
        self.blocked_requests = 0

    @property
    def marker(self) -> str:
        """A switch on every Chromium this pool starts, to find its processes by."""
        return self._marker

    def executable(self) -> str:
        """The browser binary to start; raises BrowserUnavailable when there is none."""
        path = self.options.executable_path
        if path:
            if not os.access(path, os.X_OK):
                raise BrowserUnavailable(
                    f"this page needs a browser to render it and none is installed ({path} not found)"
                )
            return path
        if self._playwright is not None:
            bundled = self._playwright.chromium.executable_path
            if bundled and os.access(bundled, os.X_OK):
                return str(bundled)
        raise BrowserUnavailable(
            "this page needs a browser to render it and none is installed "
            "(install chromium or run `playwright install chromium`)"
        )

    @contextlib.asynccontextmanager
    async def page(self) -> AsyncIterator[_Slot]:
        """Borrow a page (waits while all `pages` are busy); it goes back to the pool after."""
        if self._closed:
            raise Retryable("the browser pool is shutting down")
        async with self._slots:
            slot = await self._take()
            run = self._runs.get(slot.generation)
            if run is not None:
                run.busy += 1
            ok = False
            try:
                yield slot
                ok = True
            finally:
                slot.uses += 1
                self.renders += 1
                if run is not None:
                    run.busy -= 1
                    run.renders += 1
                await self._give_back(slot, ok, run)

    async def _take(self) -> _Slot:
        while self._idle:
            slot = self._idle.pop()
            if self._reusable(slot):
                return slot
            await self._close_slot(slot)
        run = await self._current_run()
        context = await run.browser.new_context(
            service_workers="block",
            accept_downloads=False,
            user_agent=self.options.user_agent,
        )
        try:
            slot = _Slot(context, await context.new_page(), run.generation)
            await context.add_init_script(_NO_WEBRTC)
            await context.route("**/*", lambda route: self._intercept(slot, route))
            await context.route_web_socket(lambda _url: True, self._refuse_websocket)
            slot.page.set_default_timeout(self.options.timeout_s * 1000)
        except BaseException:
            with contextlib.suppress(PlaywrightError):
                await context.close()
            raise
        self.pages_opened += 1
        return slot

    def _reusable(self, slot: _Slot) -> bool:
        run = self._runs.get(slot.generation)
        return (
            run is not None
            and not run.retiring
            and run.browser.is_connected()
            and not slot.page.is_closed()
            and slot.uses < self.options.page_uses
        )

    async def _give_back(self, slot: _Slot, ok: bool, run: _BrowserRun | None) -> None:
        if ok:
            try:
                # Stop the page's scripts and forget its cookies before the next site's page.
                await slot.page.goto("about:blank")
                await slot.context.clear_cookies()
            except PlaywrightError:
                ok = False
        slot.state = _RenderState()
        if run is not None and not run.retiring and await self._worn_out(run):
            run.retiring = True
        if ok and not self._closed and self._reusable(slot):
            self._idle.append(slot)
        else:
            await self._close_slot(slot)
        await self._retire_idle_runs()

    async def _worn_out(self, run: _BrowserRun) -> bool:
        if not run.browser.is_connected() or run.renders >= self.options.browser_uses:
            return True
        if run.process_group is None or run.renders % 10:
            return False
        used = await asyncio.to_thread(group_memory_bytes, run.process_group)
        return used > self.options.max_memory_mb * 1024 * 1024

    async def _close_slot(self, slot: _Slot) -> None:
        with contextlib.suppress(PlaywrightError):
            await slot.context.close()

    async def _retire_idle_runs(self) -> None:
        for run in list(self._runs.values()):
            if not run.retiring or run.busy:
                continue
            for slot in [s for s in self._idle if s.generation == run.generation]:
                self._idle.remove(slot)
                await self._close_slot(slot)
            await self._close_run(run)

    async def _current_run(self) -> _BrowserRun:
        async with self._launch_lock:
            run = self._run
            if run is not None and not run.retiring and run.browser.is_connected():
                return run
            if run is not None:
                run.retiring = True
            if self.options.executable_path:
                self.executable()  # a missing browser fails before the driver starts
            if self._playwright is None:
                self._playwright = await async_playwright().start()
            executable = self.executable()
            try:
                browser = await self._playwright.chromium.launch(
                    executable_path=self._wrapped(executable),
                    args=[*_LAUNCH_ARGS, self._marker],
                    timeout=self.options.timeout_s * 1000,
                    handle_sigint=False,
                    handle_sigterm=False,
                    handle_sighup=False,
                )
            except PlaywrightError as exc:
                raise BrowserUnavailable(
                    f"the browser ({executable}) could not be started: {_first_line(exc)}"
                ) from exc
            self._generation += 1
            self.launches += 1
            run = _BrowserRun(browser, self._generation, find_process_group(self._marker))
            self._runs[run.generation] = run
            self._run = run
            return run

    def _wrapped(self, executable: str) -> str:
        """`executable`, started so that it dies with the Playwright driver (where possible)."""
        script = pdeathsig_script(executable)
        if script is None:
            return executable
        if self._wrapper_dir is None:
            self._wrapper_dir = tempfile.mkdtemp(prefix="helpline-browser-")
        wrapper = Path(self._wrapper_dir) / "chromium"
        wrapper.write_text(script)
        wrapper.chmod(0o700)
        return str(wrapper)

    async def _close_run(self, run: _BrowserRun) -> None:
        self._runs.pop(run.generation, None)
        if self._run is run:
            self._run = None
        with contextlib.suppress(PlaywrightError):
            await run.browser.close()
        if run.process_group is not None:
            await asyncio.to_thread(kill_group, run.process_group)

    async def close(self) -> None:
        """Close every page and browser, stop the driver, leave no browser process behind."""
        self._closed = True
        for slot in self._idle:
            await self._close_slot(slot)
        self._idle.clear()
        for run in list(self._runs.values()):
            await self._close_run(run)
        if self._playwright is not None:
            with contextlib.suppress(PlaywrightError):
                await self._playwright.stop()
            self._playwright = None
        await self._client.aclose()
        if self._wrapper_dir is not None:
            shutil.rmtree(self._wrapper_dir, ignore_errors=True)
            self._wrapper_dir = None
        # Anything a crashed driver left behind.
        await asyncio.to_thread(kill_marked, self._marker)

    async def _intercept(self, slot: _Slot, route: Route) -> None:
        state = slot.state
        state.requests += 1
        state.inflight += 1
        state.last_activity = time.monotonic()
        try:
            async with asyncio.timeout(self.options.timeout_s):
                await self._answer(state, route, route.request)
        except Exception:
            # Whatever went wrong (a slow drip, a page that went away, a pool shutting down),
            # the request gets no answer from the network.
            with contextlib.suppress(Exception):
                await route.abort("failed")
        finally:
            state.inflight -= 1
            state.last_activity = time.monotonic()

    async def _answer(self, state: _RenderState, route: Route, request: Request) -> None:
        main_navigation = request.is_navigation_request() and request.frame.parent_frame is None
        if main_navigation and state.preloaded is not None:
            url, body, content_type = state.preloaded
            state.preloaded = None
            if request.url == url:
                await route.fulfill(status=200, body=body, headers={"content-type": content_type})
                return
        if (
            request.resource_type in _SKIPPED_RESOURCES
            or state.requests > self.options.max_requests
        ):
            await route.abort("blockedbyclient")
            return
        try:
            await resolve_checked(request.url, self._allow)
            response = await self._fetch(request)
        except BlockedAddress:
            self.blocked_requests += 1
            if main_navigation:
                state.blocked_navigation = True
            await route.abort("blockedbyclient")
            return
        except (HelplineError, httpx.HTTPError):
            await route.abort("failed")
            return
        await route.fulfill(status=response[0], headers=response[1], body=response[2])

    async def _fetch(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        headers = {
            k: v for k, v in (await request.all_headers()).items() if k.lower() not in _HOP_BY_HOP
        }
        async with self._client.stream(
            request.method, request.url, headers=headers, content=request.post_data_buffer
        ) as response:
            body = bytearray()
            async for part in response.aiter_bytes():
                body += part
                if len(body) > self.options.max_bytes:
                    raise Permanent("response too large")
            kept = {
                k: v
                for k, v in response.headers.multi_items()
                if k.lower() not in _DROPPED_RESPONSE_HEADERS
            }
            return response.status_code, kept, bytes(body)

    @staticmethod
    async def _refuse_websocket(ws: WebSocketRoute) -> None:
        # A WebSocket would be opened by the browser itself, out of the guard's reach.
        await ws.close(code=1008, reason="blocked address")


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
        self.breaker.before_call()
        crashed = False
        try:
            html, url = await self._render(fetched)
        except _BrowserCrashed as exc:
            crashed = True
            self.breaker.failed_and_defer(exc)
            raise Retryable(f"the browser failed rendering {fetched.url}") from exc
        except (TimeoutError, PlaywrightTimeoutError) as exc:
            raise Retryable(f"timed out rendering {fetched.url}") from exc
        except PlaywrightError as exc:
            raise Retryable(f"could not render {fetched.url}: {_first_line(exc)}") from exc
        finally:
            # Only a browser that died counts against it: a slow or broken site, a blocked
            # address or a missing browser do not (and a half-open trial must be released).
            if not crashed:
                self.breaker.succeeded()
        return FetchResult(
            url=url,
            status=fetched.status,
            content_type="text/html",
            text=html,
            headers=fetched.headers,
            fetched_at=utcnow(),
        )

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
                    raise _BrowserCrashed(_first_line(exc)) from exc
                raise


async def _settle(slot: _Slot, settle_s: float, min_text_chars: int) -> None:
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
                _TEXT_AT_LEAST, arg=min_text_chars, timeout=remaining * 1000, polling=50
            )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
