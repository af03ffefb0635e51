"""A worker's probes over plain HTTP: /healthz (alive), /readyz (bus connected, streams
present) and /metrics (the process's Prometheus registry).

The gateway serves these from FastAPI; worker processes have no web framework, so this
answers the three GETs Kubernetes and Prometheus send and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from helpline.common import metrics

log = logging.getLogger(__name__)

Ready = Callable[[], Awaitable[bool]]


class HealthServer:
    def __init__(self, host: str, port: int, ready: Ready) -> None:
        self.host = host
        self.port = port
        self.ready = ready
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]  # the one chosen for port 0
        log.info("probes and metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) > 1 else ""
            content_type = "application/json"
            if path == "/healthz":
                status, body = 200, b'{"status":"ok"}'
            elif path == "/metrics":
                status, body, content_type = 200, metrics.exposition(), metrics.CONTENT_TYPE
            elif path == "/readyz":
                ok = await self.ready()
                status, body = (
                    (200, b'{"status":"ready"}') if ok else (503, b'{"status":"not ready"}')
                )
            else:
                status, body = 404, b'{"detail":"not found"}'
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
