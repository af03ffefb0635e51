"""A NATS JetStream cluster of real `nats-server` processes on loopback, for the tests and
benchmarks that prove the scale-out path: three servers by default, joined by routes, each
with its own store, so streams and buckets can be R3 and a server can be killed -9,
restarted, or restarted one after the other as in a rolling upgrade."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import nats
from nats.js import JetStreamContext
from nats.js.errors import APIError

from helpline.cli.natsserver import NatsServer, free_port

CLUSTER_NAME = "helpline"


class NatsCluster:
    """`size` JetStream servers clustered on 127.0.0.1: `url` names them all, comma-separated
    (as `HELPLINE_NATS_URL` and the NATS CLI take them)."""

    def __init__(self, store_dir: Path, size: int = 3) -> None:
        self.store_dir = store_dir
        ports = [free_port() for _ in range(size)]
        routes = [free_port() for _ in range(size)]
        listed = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
        self.servers: dict[str, NatsServer] = {}
        # Every stream seen in a listing (one without a leader may be missing from the next).
        self._streams: set[str] = set()
        for index, (port, route) in enumerate(zip(ports, routes, strict=True)):
            name = f"n{index + 1}"
            config = (
                f"server_name: {name}\n"
                f"cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{route}, "
                f"routes: [{listed}] }}\n"
            )
            self.servers[name] = NatsServer(store_dir / name, port=port, config=config)

    @property
    def url(self) -> str:
        return ",".join(server.url for server in self.servers.values())

    def start(self, timeout_s: float = 30.0) -> NatsCluster:
        """Start every server and wait until JetStream answers through the cluster."""
        for server in self.servers.values():
            server.start()
        self.wait_ready(timeout_s)
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def kill(self, name: str) -> None:
        """SIGKILL one server: no goodbye to its peers or clients."""
        self.servers[name].kill()

    def restart(self, name: str, timeout_s: float = 30.0) -> None:
        """Start a stopped or killed server again on its port and store; wait until the
        cluster's JetStream answers through it."""
        self.servers[name].start()
        self.wait_ready(timeout_s, through=name)

    def running(self) -> list[str]:
        return [name for name, server in self.servers.items() if server.process is not None]

    def wait_ready(self, timeout_s: float = 30.0, *, through: str | None = None) -> None:
        """Until a JetStream request answers (a meta leader is elected), asked of `through`
        or of any running server."""
        urls = (
            [self.servers[through].url]
            if through
            else [self.servers[n].url for n in self.running()]
        )
        asyncio.run(_wait_jetstream(urls, timeout_s))

    def leader(self, stream: str, timeout_s: float = 30.0) -> str:
        """The server that leads `stream` now (its name, `n1`...)."""
        urls = [self.servers[n].url for n in self.running()]
        return asyncio.run(_stream_leader(urls, stream, timeout_s))

    def wait_led(self, timeout_s: float = 60.0) -> float:
        """Until every stream and every consumer has a leader again (after a restart, each
        group elects its own, seconds after the server is back: till then requests to it go
        unanswered); returns the seconds it took."""
        urls = [self.servers[n].url for n in self.running()]
        began = time.monotonic()
        self._streams |= asyncio.run(_wait_led(urls, self._streams, timeout_s))
        return time.monotonic() - began

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _wait_jetstream(urls: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            connection = await nats.connect(
                servers=urls, connect_timeout=1, max_reconnect_attempts=0
            )
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.2)
            continue
        try:
            await connection.jetstream(timeout=2).account_info()
            return
        except Exception as exc:
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await connection.close()
        await asyncio.sleep(0.2)
    raise TimeoutError(f"JetStream did not answer within {timeout_s}s: {last!r}")


async def _stream_leader(urls: list[str], stream: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    connection = await nats.connect(servers=urls, connect_timeout=2)
    try:
        js = connection.jetstream(timeout=2)
        while True:
            try:
                info = await js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return info.cluster.leader
            except (APIError, TimeoutError, nats.errors.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream} has no leader after {timeout_s}s")
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


async def _wait_led(urls: list[str], known: set[str], timeout_s: float) -> set[str]:
    deadline = time.monotonic() + timeout_s
    connection = await nats.connect(servers=urls, connect_timeout=2)
    try:
        js = connection.jetstream(timeout=2)
        names = set(known)
        while True:
            try:
                names |= {info.config.name for info in await js.streams_info() if info.config.name}
                if all([await _led(js, name) for name in sorted(names)]):
                    return names
            except (APIError, TimeoutError, nats.errors.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streams or consumers without a leader after {timeout_s}s")
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


async def _led(js: JetStreamContext, stream: str) -> bool:
    """Whether `stream` and each of its consumers have a leader."""
    info = await js.stream_info(stream)
    if info.cluster is None or not info.cluster.leader:
        return False
    consumers = await js.consumers_info(stream)
    return all(c.cluster is not None and c.cluster.leader for c in consumers)
