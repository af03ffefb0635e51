"""The Chromium pool: one browser, reused pages, restarted when worn out or crashed.

Processes: one Playwright driver and one Chromium per pool, started on the first render
(a process that never renders never starts a browser). Chromium is its own process group
(Playwright starts it detached); where util-linux `setpriv` exists it is launched with
`--pdeathsig KILL`, so a driver that dies (because the scraper died: the driver exits when
its pipe closes) takes the browser with it. `close()` closes the browser, stops the driver,
then kills whatever is left of the browser's process group.

Every request of the pool's pages goes through `routing.GuardedRouter` (the SSRF guard);
Chromium is launched with a proxy that leads nowhere (`--proxy-server` to a closed loopback
port, loopback not exempted), so whatever slips past interception (preconnects, DNS
prefetch) fails closed. Service workers are blocked, WebRTC is switched off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError

from helpline.common.errors import Permanent, Retryable
from helpline.common.guard import AllowList
from helpline.common.processes import (
    find_process_group,
    group_memory_bytes,
    kill_group,
    kill_marked,
    pdeathsig_script,
)
from helpline.scraper.routing import GuardedRouter, RenderState

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


class BrowserUnavailable(Permanent):
    """No browser can be started here: pages that need one fail, everything else works."""


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
class Slot:
    """A pooled page in its own context, and what its current render has seen."""

    context: BrowserContext
    page: Page
    generation: int
    state: RenderState = field(default_factory=RenderState)
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
        self._router = GuardedRouter(
            allow,
            timeout_s=options.timeout_s,
            max_requests=options.max_requests,
            max_bytes=options.max_bytes,
            transport=transport,
        )
        self._slots = asyncio.Semaphore(options.pages)
        self._idle: list[Slot] = []
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

    @property
    def blocked_requests(self) -> int:
        """Requests refused because they led to a blocked address."""
        return self._router.blocked_requests

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
    async def page(self) -> AsyncIterator[Slot]:
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

    async def _take(self) -> Slot:
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
            slot = Slot(context, await context.new_page(), run.generation)
            await context.add_init_script(_NO_WEBRTC)
            await self._router.attach(context, lambda: slot.state)
            slot.page.set_default_timeout(self.options.timeout_s * 1000)
        except BaseException:
            with contextlib.suppress(PlaywrightError):
                await context.close()
            raise
        self.pages_opened += 1
        return slot

    def _reusable(self, slot: Slot) -> bool:
        run = self._runs.get(slot.generation)
        return (
            run is not None
            and not run.retiring
            and run.browser.is_connected()
            and not slot.page.is_closed()
            and slot.uses < self.options.page_uses
        )

    async def _give_back(self, slot: Slot, ok: bool, run: _BrowserRun | None) -> None:
        if ok:
            try:
                # Stop the page's scripts and forget its cookies before the next site's page.
                await slot.page.goto("about:blank")
                await slot.context.clear_cookies()
            except PlaywrightError:
                ok = False
        slot.state = RenderState()
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

    async def _close_slot(self, slot: Slot) -> None:
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
                    f"the browser ({executable}) could not be started: {first_line(exc)}"
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
        await self._router.aclose()
        if self._wrapper_dir is not None:
            shutil.rmtree(self._wrapper_dir, ignore_errors=True)
            self._wrapper_dir = None
        # Anything a crashed driver left behind.
        await asyncio.to_thread(kill_marked, self._marker)


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (at most 200 characters), for task errors."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
