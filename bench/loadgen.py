"""A lean load generator for the REST API: keep-alive HTTP/1.1 over asyncio streams.

The benchmarks share two cores with the system they measure, so the client's own CPU is
taken from the gateway and the workers. httpx's AsyncClient spent about 3 ms of CPU per
query request here (a fifth of all the CPU a query cost); this client reads a status
line, headers and a Content-Length body, and nothing else. It speaks only what the
gateway answers these requests with: no chunked bodies, no redirects, no TLS.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any
from urllib.parse import urlsplit


class HttpError(RuntimeError):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, base_url: str, *, key: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only http://host:port is supported, not {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._auth = f"Authorization: Bearer {key}\r\n" if key else ""

    async def post_json(self, path: str, body: dict[str, Any], *, expect: int = 200) -> Any:
        """POST `body` as JSON; the decoded JSON answer, or HttpError for another status."""
        return await self.request("POST", path, body, expect=expect)

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, expect: int = 200
    ) -> Any:
        """One request (a JSON body when given); the decoded JSON answer, or HttpError."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        payload = b"" if body is None else json.dumps(body).encode()
        kind = "" if body is None else "Content-Type: application/json\r\n"
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{kind}{self._auth}"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length = None
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise HttpError(status, b"chunked bodies are not supported by this client")
        data = await reader.readexactly(length or 0)
        if status != expect:
            raise HttpError(status, data)
        return json.loads(data) if data else None

    async def close(self) -> None:
        if self._streams is not None:
            _, writer = self._streams
            self._streams = None
            writer.close()
            await writer.wait_closed()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def submit_pings(
    base_url: str, n: int, connections: int = 64, *, key: str | None = None
) -> list[str]:
    """N `POST /api/v1/maintenance/ping` spread over `connections` keep-alive connections
    (sending API key `key`); the task ids, in the order they were accepted."""
    submitted: list[str] = []

    async def client(count: int) -> None:
        connection = Connection(base_url, key=key)
        try:
            for _ in range(count):
                answer = await connection.post_json("/api/v1/maintenance/ping", {}, expect=202)
                submitted.append(answer["task_id"])
        finally:
            await connection.close()

    shares = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]
    await asyncio.gather(*(client(c) for c in shares if c))
    return submitted


async def query_load(
    base_url: str,
    concurrency: int,
    requests: int,
    questions: list[str],
    *,
    brand: str,
    cache: bool,
    key: str | None = None,
) -> dict[str, float]:
    """`requests` POST /api/v1/query (questions in turn) from `concurrency` connections
    (sending API key `key`)."""
    latencies: list[float] = []
    server_ms: list[float] = []
    cached: list[bool] = []
    pending = [questions[i % len(questions)] for i in range(requests)][::-1]

    async def client() -> None:
        connection = Connection(base_url, key=key)
        try:
            while pending:
                question = pending.pop()
                started = time.perf_counter()
                answer = await connection.post_json(
                    "/api/v1/query", {"question": question, "brand": brand, "cache": cache}
                )
                latencies.append((time.perf_counter() - started) * 1000)
                server_ms.append(answer["duration_ms"])
                cached.append(answer["cached"])
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "mean": statistics.fmean(latencies),
        "server_p50": percentile(server_ms, 50),
        "server_p99": percentile(server_ms, 99),
        "hit_share": sum(cached) / len(cached),
        "qps": requests / elapsed,
    }
