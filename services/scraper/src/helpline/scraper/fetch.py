"""Fetching pages: every request the scraper makes goes through `Fetcher`, behind the SSRF guard."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import urljoin

import httpcore
import httpx

from helpline.common.errors import InputRejected, Permanent, Retryable
from helpline.common.messages import utcnow
from helpline.scraper.guard import AllowList, check_host, resolve_checked
from helpline.scraper.urls import normalize_url

DEFAULT_USER_AGENT = "HelplineBot/0.1 (+https://helpline.example/bot)"
HTML_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml"})

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:-]+)""", re.IGNORECASE)


@dataclass(frozen=True)
class FetchResult:
    """A fetched HTML page; `url` is the final URL after redirects."""

    url: str
    status: int
    content_type: str
    text: str
    headers: dict[str, str]
    fetched_at: datetime


class Fetcher:
    """An HTTP client that follows redirects itself so the guard sees every hop."""

    def __init__(
        self,
        allow: AllowList,
        user_agent: str = DEFAULT_USER_AGENT,
        timeout_s: float = 15.0,
        max_bytes: int = 5_000_000,
        max_redirects: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
        content_types: Collection[str] = HTML_CONTENT_TYPES,
    ) -> None:
        self._allow = allow
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._content_types = frozenset(t.lower() for t in content_types)
        self._client = httpx.AsyncClient(
            transport=transport or GuardedTransport(allow),
            follow_redirects=False,
            timeout=timeout_s,
            headers={
                "User-Agent": user_agent,
                "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1",
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

    async def fetch(self, url: str) -> FetchResult:
        """Fetch an HTML page, following up to `max_redirects` redirects within `timeout_s`."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._follow(url)
        except TimeoutError as exc:
            raise Retryable(f"timed out fetching {url}") from exc

    async def _follow(self, url: str) -> FetchResult:
        current = url
        for _ in range(self._max_redirects + 1):
            await resolve_checked(current, self._allow)
            target = normalize_url(current)
            if target is None:
                raise InputRejected(f"not a fetchable URL: {current}", field="url")
            try:
                response = await self._client.send(
                    self._client.build_request("GET", target), stream=True
                )
                try:
                    location = _redirect_location(response, target)
                    if location is None:
                        return await self._read(response, target)
                finally:
                    await response.aclose()
            except httpx.TimeoutException as exc:
                raise Retryable(f"timed out fetching {target}") from exc
            except httpx.DecodingError as exc:
                raise Permanent(f"could not decode the response from {target}") from exc
            except httpx.TransportError as exc:
                raise Retryable(f"network error fetching {target}") from exc
            current = location
        raise Permanent(f"too many redirects fetching {url}")

    async def _read(self, response: httpx.Response, url: str) -> FetchResult:
        content_type = response.headers.get("content-type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type not in self._content_types:
            raise Permanent(f"not an HTML page (content type {media_type or 'missing'})")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise Permanent(f"response larger than {self._max_bytes} bytes")
        body = bytearray()
        async for part in response.aiter_bytes():
            body += part
            if len(body) > self._max_bytes:
                raise Permanent(f"response larger than {self._max_bytes} bytes")
        return FetchResult(
            url=url,
            status=response.status_code,
            content_type=media_type,
            text=decode_body(bytes(body), response.charset_encoding),
            headers={k.lower(): v for k, v in response.headers.items()},
            fetched_at=utcnow(),
        )


def decode_body(body: bytes, charset: str | None) -> str:
    """Decode a page by its byte-order mark, the header's charset, <meta charset>, or UTF-8."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return body.decode(encoding, errors="replace")
    encoding = _text_encoding(charset) or _sniff_encoding(body)
    return body.decode(encoding, errors="replace")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or utcnow())).total_seconds())


def _redirect_location(response: httpx.Response, url: str) -> str | None:
    status = response.status_code
    reason = response.reason_phrase or _phrase(status)
    message = f"HTTP {status} {reason} from {url}"
    if status in _REDIRECTS:
        location = str(response.headers.get("location", "")).strip()
        if not location:
            raise Permanent(f"{message} without a Location header")
        return urljoin(url, location)
    if status in (429, 503):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise Retryable(message, retry_after=retry_after)
    if status == 408 or status >= 500:
        raise Retryable(message)
    if not 200 <= status < 300:
        raise Permanent(message)
    return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _text_encoding(name: str | None) -> str | None:
    if not name:
        return None
    try:
        # Rejects unknown names and also bytes-to-bytes codecs such as "zlib".
        b"a".decode(name, errors="ignore")
    except LookupError:
        return None
    return name


def _sniff_encoding(body: bytes) -> str:
    match = _META_CHARSET.search(body[:4096])
    if match is not None:
        declared = _text_encoding(match.group(1).decode("ascii", errors="ignore"))
        if declared is not None:
            return declared
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        # What browsers assume for undeclared legacy pages.
        return "cp1252"
    return "utf-8"


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses the guard has just approved.

    Checking the URL before the request is not enough on its own: the connection pool
    resolves the name again, and a DNS answer that changes in between would slip past.
    """

    def __init__(self, allow: AllowList) -> None:
        self._allow = allow
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        error: httpcore.ConnectError | None = None
        for address in await check_host(host, port, self._allow):
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"could not connect to {host}")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's default transport, except that it connects only to addresses the guard allows."""

    def __init__(self, allow: AllowList) -> None:
        super().__init__(trust_env=False)
        # httpx's own pool, with its default limits, but connecting through the guard.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(allow),
        )
