"""HTTP through the SSRF guard: httpx's transport, connecting only to addresses `guard`
has just approved (the scraper's fetches, the webhooks' deliveries). Needs the `http` extra."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
import httpx

from helpline.common.guard import AllowList, check_host
from helpline.common.messages import utcnow


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
