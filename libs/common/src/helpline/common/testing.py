"""Test helpers shared by the package tests, the integration tests and the benchmarks."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from helpline.common.natsserver import free_port

# A route handler gets the request handler and writes the whole response itself.
Route = Callable[[SimpleHTTPRequestHandler], None]


class _QuietHandler(SimpleHTTPRequestHandler):
    routes: dict[str, Route] = {}  # noqa: RUF012 - replaced per server by a subclass

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        route = self.routes.get(self.path.split("?", 1)[0])
        if route is not None:
            route(self)
            return
        super().do_GET()


@contextlib.contextmanager
def serve_site(
    root: Path, *, host: str = "127.0.0.1", routes: dict[str, Route] | None = None
) -> Iterator[str]:
    """Serve a folder (plus special routes) over HTTP on a free loopback port; yields the base URL."""
    handler = type("SiteHandler", (_QuietHandler,), {"routes": dict(routes or {})})
    server = ThreadingHTTPServer(
        (host, free_port(host)), functools.partial(handler, directory=str(root))
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="site", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def slow_route(seconds: float) -> Route:
    """A route that answers only after `seconds` (longer than the fetch timeout: a timeout)."""

    def route(request: SimpleHTTPRequestHandler) -> None:
        time.sleep(seconds)
        with contextlib.suppress(OSError):
            body = b"<html><body><p>finally</p></body></html>"
            request.send_response(200)
            request.send_header("Content-Type", "text/html")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)

    return route
