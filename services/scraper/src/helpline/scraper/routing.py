"""The browser's network, behind the SSRF guard: every request a page makes is answered by us.

Every request any page, frame or dedicated worker makes (documents, subresources, fetch/XHR,
navigations by script) is intercepted with `BrowserContext.route` and *fulfilled by us*,
fetched through the scraper's own `GuardedTransport` (the same address check and DNS pinning
as HTTP fetches, no redirects followed: a 3xx goes back to the browser, whose next request is
intercepted and checked again). WebSockets are routed and closed. Chromium itself never opens
a connection for a page: `browser.py` launches it with a proxy that leads nowhere, so
whatever slips past interception fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from playwright.async_api import BrowserContext, Request, Route, WebSocketRoute

from helpline.common.errors import BlockedAddress, HelplineError, Permanent
from helpline.common.guard import AllowList, resolve_checked
from helpline.common.httpguard import GuardedTransport

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


@dataclass
class RenderState:
    """What one render of one page has seen so far (reset for every render)."""

    preloaded: tuple[str, bytes, str] | None = None
    blocked_navigation: bool = False
    requests: int = 0
    inflight: int = 0
    last_activity: float = field(default_factory=time.monotonic)


class GuardedRouter:
    """Answers a browser context's requests through the guarded HTTP client, or refuses them."""

    def __init__(
        self,
        allow: AllowList,
        *,
        timeout_s: float,
        max_requests: int,
        max_bytes: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._allow = allow
        self._timeout_s = timeout_s
        self._max_requests = max_requests
        self._max_bytes = max_bytes
        self._client = httpx.AsyncClient(
            transport=transport or GuardedTransport(allow),
            follow_redirects=False,
            timeout=timeout_s,
            trust_env=False,
        )
        self.blocked_requests = 0

    async def attach(self, context: BrowserContext, state: Callable[[], RenderState]) -> None:
        """Route every request and WebSocket of `context`; `state()` is the current render's."""
        await context.route("**/*", lambda route: self._intercept(state(), route))
        await context.route_web_socket(lambda _url: True, self._refuse_websocket)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _intercept(self, state: RenderState, route: Route) -> None:
        state.requests += 1
        state.inflight += 1
        state.last_activity = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._answer(state, route, route.request)
        except Exception:
            # Whatever went wrong (a slow drip, a page that went away, a pool shutting down),
            # the request gets no answer from the network.
            with contextlib.suppress(Exception):
                await route.abort("failed")
        finally:
            state.inflight -= 1
            state.last_activity = time.monotonic()

    async def _answer(self, state: RenderState, route: Route, request: Request) -> None:
        main_navigation = request.is_navigation_request() and request.frame.parent_frame is None
        if main_navigation and state.preloaded is not None:
            url, body, content_type = state.preloaded
            state.preloaded = None
            if request.url == url:
                await route.fulfill(status=200, body=body, headers={"content-type": content_type})
                return
        if request.resource_type in _SKIPPED_RESOURCES or state.requests > self._max_requests:
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
                if len(body) > self._max_bytes:
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
