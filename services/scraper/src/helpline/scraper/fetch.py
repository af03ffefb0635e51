"""Fetching pages: every request the scraper makes goes through `Fetcher`, behind the SSRF guard."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from types import TracebackType
from typing import Self
from urllib.parse import urljoin

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from helpline.common.errors import Deferred, InputRejected, Permanent, Retryable
from helpline.common.guard import AllowList, resolve_checked
from helpline.common.httpguard import GuardedTransport, parse_retry_after
from helpline.common.messages import utcnow
from helpline.scraper.bodies import charset_param, decode_body, read_body
from helpline.scraper.spans import server_attributes, step, traced_url
from helpline.scraper.urls import normalize_url

DEFAULT_USER_AGENT = "HelplineBot/0.1 (+https://helpline.example/bot)"
PDF_CONTENT_TYPE = "application/pdf"
HTML_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml"})
PAGE_CONTENT_TYPES = HTML_CONTENT_TYPES | {PDF_CONTENT_TYPE}

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PDF_SIGNATURE = b"%PDF-"
# A Retry-After beyond this is treated as an ordinary failure (it spends an attempt).
MAX_DEFERRAL_S = 3600.0


class PageGone(Permanent):
    """404 or 410: the page is not there (any more)."""


@dataclass(frozen=True)
class Validators:
    """What a server said identifies a version of a page, sent back for a conditional GET."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out


@dataclass(frozen=True)
class FetchResult:
    """A fetched page (HTML or PDF); `url` is the final URL after redirects.

    Status 304 (a conditional GET whose page did not change) has no body.
    """

    url: str
    status: int
    content_type: str
    text: str
    headers: dict[str, str]
    fetched_at: datetime
    body: bytes = b""

    @property
    def is_pdf(self) -> bool:
        return self.content_type == PDF_CONTENT_TYPE

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def validators(self) -> Validators:
        return Validators(self.headers.get("etag"), self.headers.get("last-modified"))


@dataclass(frozen=True)
class RawResponse:
    """Any response, after redirects, status not judged: for robots.txt and sitemaps."""

    url: str
    status: int
    headers: dict[str, str]
    body: bytes


class Fetcher:
    """An HTTP client that follows redirects itself so the guard sees every hop.

    Hostile responses are cut short: bodies are counted after decompression (a gzip bomb
    stops at `max_bytes`), headers are capped at `max_header_bytes`, and one deadline
    covers the whole fetch, so a server that drips its body never holds a slot for long.
    """

    def __init__(
        self,
        allow: AllowList,
        user_agent: str = DEFAULT_USER_AGENT,
        timeout_s: float = 15.0,
        max_bytes: int = 5_000_000,
        max_redirects: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
        content_types: Collection[str] = PAGE_CONTENT_TYPES,
        max_header_bytes: int = 32_768,
    ) -> None:
        self._allow = allow
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._max_header_bytes = max_header_bytes
        self._content_types = frozenset(t.lower() for t in content_types)
        self.user_agent = user_agent
        self._client = httpx.AsyncClient(
            transport=transport or GuardedTransport(allow),
            follow_redirects=False,
            timeout=timeout_s,
            headers={
                "User-Agent": user_agent,
                "Accept": "text/html,application/xhtml+xml;q=0.9,application/pdf;q=0.8,*/*;q=0.1",
                # Decoded here, not by httpx, so the size cap applies while inflating.
                "Accept-Encoding": "gzip, deflate",
            },
            # Proxies from the environment would connect on our behalf, out of the guard's sight.
            trust_env=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def fetch(self, url: str, validators: Validators | None = None) -> FetchResult:
        """Fetch an HTML page or a PDF, following up to `max_redirects` redirects within `timeout_s`.

        With `validators` the request is conditional; an unchanged page comes back as 304.
        """
        headers = validators.headers() if validators else {}
        final, status, response_headers, body = await self._exchange(
            url, headers, self._max_bytes, judge=True
        )
        if status == 304:
            return FetchResult(final, 304, "", "", response_headers, utcnow())
        content_type = response_headers.get("content-type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type not in self._content_types:
            if PDF_CONTENT_TYPE in self._content_types and body.startswith(_PDF_SIGNATURE):
                media_type = PDF_CONTENT_TYPE
            else:
                raise Permanent(f"not an HTML page (content type {media_type or 'missing'})")
        text = (
            "" if media_type == PDF_CONTENT_TYPE else decode_body(body, charset_param(content_type))
        )
        return FetchResult(
            url=final,
            status=status,
            content_type=media_type,
            text=text,
            headers=response_headers,
            fetched_at=utcnow(),
            body=body,
        )

    async def fetch_raw(self, url: str, max_bytes: int = 512_000) -> RawResponse:
        """Any response with its status (robots.txt, sitemaps), body up to `max_bytes`."""
        final, status, headers, body = await self._exchange(url, {}, max_bytes, judge=False)
        return RawResponse(final, status, headers, body)

    async def _exchange(
        self, url: str, headers: dict[str, str], max_bytes: int, *, judge: bool
    ) -> tuple[str, int, dict[str, str], bytes]:
        reading = [False]
        attributes = {"http.request.method": "GET", "url.full": traced_url(url)}
        try:
            with step(
                "fetch", kind=SpanKind.CLIENT, attributes={**attributes, **server_attributes(url)}
            ):
                async with asyncio.timeout(self._timeout_s):
                    return await self._follow(url, headers, max_bytes, judge, reading)
        except TimeoutError as exc:
            if reading[0]:
                # Headers came, the body did not: a drip that would hold the slot for ever.
                raise Permanent(
                    f"gave up reading {url}: the body did not arrive within {self._timeout_s:g} s"
                ) from exc
            raise Retryable(f"timed out fetching {url}") from exc

    async def _follow(
        self,
        url: str,
        headers: dict[str, str],
        max_bytes: int,
        judge: bool,
        reading: list[bool],
    ) -> tuple[str, int, dict[str, str], bytes]:
        current = url
        traced = trace.get_current_span()
        for redirects in range(self._max_redirects + 1):
            traced.set_attribute("helpline.fetch.redirects", redirects)
            await resolve_checked(current, self._allow)
            target = normalize_url(current)
            if target is None:
                raise InputRejected(f"not a fetchable URL: {current}", field="url")
            try:
                response = await self._client.send(
                    self._client.build_request("GET", target, headers=headers), stream=True
                )
                traced.set_attribute("http.response.status_code", response.status_code)
                try:
                    self._check_headers(response, target)
                    location = _redirect_location(response, target, judge)
                    if location is None:
                        reading[0] = True
                        body = b""
                        if 200 <= response.status_code < 300:
                            body = await read_body(response, max_bytes)
                        # Decoded bytes: not semconv's http.response.body.size (on the wire).
                        traced.set_attribute("helpline.fetch.body_bytes", len(body))
                        return (
                            target,
                            response.status_code,
                            {k.lower(): v for k, v in response.headers.items()},
                            body,
                        )
                finally:
                    await response.aclose()
            except httpx.TimeoutException as exc:
                if reading[0]:
                    raise Permanent(
                        f"gave up reading {target}: the body did not arrive in time"
                    ) from exc
                raise Retryable(f"timed out fetching {target}") from exc
            except httpx.RemoteProtocolError as exc:
                if _oversized_headers(exc):
                    raise Permanent(f"response headers from {target} larger than allowed") from exc
                raise Retryable(f"network error fetching {target}") from exc
            except httpx.TransportError as exc:
                raise Retryable(f"network error fetching {target}") from exc
            current = location
        raise Permanent(f"too many redirects fetching {url}")

    def _check_headers(self, response: httpx.Response, url: str) -> None:
        size = sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
        if size > self._max_header_bytes:
            raise Permanent(
                f"response headers from {url} larger than {self._max_header_bytes} bytes"
            )


def _oversized_headers(exc: Exception) -> bool:
    return "buffer too long" in str(exc).lower()


def _redirect_location(response: httpx.Response, url: str, judge: bool = True) -> str | None:
    """Where a redirect points; None for a final answer; errors for statuses `judge`d bad."""
    status = response.status_code
    reason = response.reason_phrase or _phrase(status)
    message = f"HTTP {status} {reason} from {url}"
    if status in _REDIRECTS:
        location = str(response.headers.get("location", "")).strip()
        if not location:
            raise Permanent(f"{message} without a Location header")
        return urljoin(url, location)
    if not judge or status == 304:
        return None
    if status in (429, 503):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is not None and retry_after <= MAX_DEFERRAL_S:
            # The site said when to come back: waiting for it is not a failed attempt.
            raise Deferred(message, retry_after=retry_after)
        raise Retryable(message, retry_after=retry_after)
    if status == 408 or status >= 500:
        raise Retryable(message)
    if status in (404, 410):
        raise PageGone(message)
    if not 200 <= status < 300:
        raise Permanent(message)
    return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
