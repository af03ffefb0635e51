"""Test helpers (dev only, no service depends on them): local sites, and `helpline up` and
`helpline run <service>` as child processes, for the package tests, the integration tests
and the benchmarks."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from helpline.cli.adminkey import read_admin_key
from helpline.cli.natsserver import free_port
from helpline.common.processes import all_pids, stat_fields, stop_process

#: The admin key of the systems tests start in process (HELPLINE_ADMIN_KEY), new each run.
TEST_ADMIN_KEY = "hl_" + secrets.token_urlsafe(32)


def bearer(key: str) -> dict[str, str]:
    """The header that presents `key`."""
    return {"Authorization": f"Bearer {key}"}


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


@contextlib.contextmanager
def serve_site_process(root: Path, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve a folder from a process of its own (Python's http.server); yields the base URL.

    For benchmarks: a site under load then takes no GIL from the process that measures.
    """
    port = free_port(host)
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", host, "--directory", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{base}/", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the HTTP server for {root} did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        stop_process(proc, 10.0)


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


class HelplineUp:
    """`helpline up` as a child process (the real all-in-one runner), for tests and benchmarks."""

    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, *, port: int | None = None
    ):
        self.data_dir = data_dir
        self.port = port or free_port()
        # Where up's own process (the workers it hosts) answers probes and /metrics.
        self.probes_port = free_port()
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "helpline-up.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def probes_url(self) -> str:
        return f"http://127.0.0.1:{self.probes_port}"

    @property
    def admin_key(self) -> str:
        """The admin API key: the test's HELPLINE_ADMIN_KEY, else the one up made (and
        keeps in the data dir)."""
        key = self.env.get("HELPLINE_ADMIN_KEY") or read_admin_key(self.data_dir)
        if not key:
            raise RuntimeError(f"no admin key: helpline up has not made one in {self.data_dir}")
        return key

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.admin_key)

    def client(self, timeout_s: float = 30.0) -> httpx.Client:
        """A client of the gateway that sends the admin key."""
        return httpx.Client(base_url=self.url, timeout=timeout_s, headers=self.headers)

    def start(self, timeout_s: float = 90.0) -> HelplineUp:
        """Start and wait until /readyz answers 200."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **_inherited_env(),
            "HELPLINE_DATA_DIR": str(self.data_dir),
            "HELPLINE_HTTP_PORT": str(self.port),
            "HELPLINE_UP_PROBES_PORT": str(self.probes_port),
            "HELPLINE_HTTP_HOST": "127.0.0.1",
            **self.env,
        }
        self.process = _spawn(["up"], env, self.log_path)
        try:
            _wait_ready(self.process, f"{self.url}/readyz", timeout_s, self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        proc, self.process = self.process, None
        return _terminate(proc, timeout_s)

    def kill(self, timeout_s: float = 30.0) -> None:
        """SIGKILL (no chance to hand anything back), then wait until its children (the
        gateway, nats-server, extraction workers), which die with it, are gone: a restart on
        the same ports and data dir does not race them."""
        proc, self.process = self.process, None
        if proc is None:
            return
        children = children_of(proc.pid)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        deadline = time.monotonic() + timeout_s
        while (alive := [p for p in children if _running(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive:
            raise TimeoutError(f"helpline up's children {alive} outlived it by {timeout_s}s")

    def __enter__(self) -> HelplineUp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    helpline = Path(sys.executable).parent / "helpline"
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [str(helpline), *args], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float, log_path: Path) -> None:
    """Until `url` answers 200; fails fast if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"helpline exited ({proc.returncode}); see {log_path}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"not ready within {timeout_s}s; see {log_path}")


def _terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> int | None:
    """SIGTERM, wait, SIGKILL if it lingers; the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid`, read from /proc (none where there is none)."""
    return [p for p in all_pids() if (f := stat_fields(p)) and len(f) > 1 and f[1] == str(pid)]


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    fields = stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def _inherited_env() -> dict[str, str]:
    """The parent's environment minus any Helpline settings, so only what a test sets applies."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HELPLINE_")}


class ServiceProcess:
    """`helpline run <service>` as a child process, against a NATS URL, for fault tests."""

    def __init__(
        self, service: str, nats_url: str, data_dir: Path, env: dict[str, str] | None = None
    ):
        self.service = service
        self.nats_url = nats_url
        self.data_dir = data_dir
        self.port = free_port()
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"{service}-{self.port}.log"

    def start(self, timeout_s: float = 60.0) -> ServiceProcess:
        """Start and wait until its /readyz answers 200."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **_inherited_env(),
            "HELPLINE_NATS_URL": self.nats_url,
            "HELPLINE_DATA_DIR": str(self.data_dir),
            "HELPLINE_HTTP_PORT": str(self.port),
            "HELPLINE_HTTP_HOST": "127.0.0.1",
            "HELPLINE_LOG_JSON": "false",
            **self.env,
        }
        self.process = _spawn(["run", self.service], env, self.log_path)
        try:
            _wait_ready(
                self.process, f"http://127.0.0.1:{self.port}/readyz", timeout_s, self.log_path
            )
        except BaseException:
            self.kill()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no chance to hand anything back."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def terminate(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait for the graceful exit; returns the exit code."""
        proc, self.process = self.process, None
        return _terminate(proc, timeout_s)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.terminate()
