"""Integration fixtures: a real nats-server, a real local documentation site, the real model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from helpline.cli.natsserver import NatsServer
from helpline.common.bus import Bus
from helpline.common.embedding import Embedder
from helpline.common.knowledge import Knowledge
from helpline.common.layout import BusLayout
from helpline.common.observability import setup_tracing
from helpline.common.runtime import Host
from helpline.common.vectors import VectorStore, open_store
from helpline.embedder.app import EmbedderComponent
from helpline.embedder.settings import EmbedderSettings
from helpline.gateway.app import GatewayComponent
from helpline.gateway.settings import GatewaySettings
from helpline.maintenance.app import MaintenanceComponent
from helpline.maintenance.settings import MaintenanceSettings
from helpline.rag.app import RagComponent
from helpline.rag.settings import RagSettings
from helpline.scraper.app import ScraperComponent
from helpline.scraper.settings import ScraperSettings
from helpline.testing import TEST_ADMIN_KEY, bearer, serve_site, slow_route

SITE = Path(__file__).parent / "site"

#: An API key as the gateway makes them, or as tests and `helpline up` make admin keys.
KEY_SHAPE = re.compile(r"hl_[0-9a-f]{16}_[A-Za-z0-9_\-]{43}|hl_[A-Za-z0-9_\-]{43}")
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({})))


class KeyWatch(logging.Handler):
    """Every log record of the run, looked at for an API key (message, arguments, extras)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            extras = " ".join(str(v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
            text = f"{record.getMessage()} {record.exc_text or ''} {extras}"
        except Exception:  # a record that cannot be formatted says nothing here
            return
        if "hl_" in text and KEY_SHAPE.search(text):
            self.leaks.append(f"{record.name}: {text[:300]}")


KEYS_IN_LOGS = KeyWatch()
_WATCHED: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(KEYS_IN_LOGS)
    # INFO reaches the handlers (access-log lines among them), not only warnings.
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


@pytest.fixture(scope="session", autouse=True)
def _watch_for_keys(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Where the run's child processes log (under the session's temporary folder)."""
    _WATCHED["logs"] = tmp_path_factory.getbasetemp()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The whole run's logs, in this process and in every child's log file, and its
    recorded spans hold no API key; a leak fails the run."""
    leaks = list(KEYS_IN_LOGS.leaks)
    base = _WATCHED.get("logs")
    if isinstance(base, Path) and base.exists():
        for log_file in base.rglob("*.log"):
            with contextlib.suppress(OSError):
                for line in log_file.read_text(errors="replace").splitlines():
                    if "hl_" in line and KEY_SHAPE.search(line):
                        leaks.append(f"{log_file.name}: {line[:300]}")
    exporter = _WATCHED.get("spans")
    if isinstance(exporter, InMemorySpanExporter):
        for span in exporter.get_finished_spans():
            text = f"{span.name} {dict(span.attributes or {})}"
            if "hl_" in text and KEY_SHAPE.search(text):
                leaks.append(f"span {text[:300]}")
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("API keys found in the run's logs or spans:", red=True)
            for leak in leaks[:20]:
                reporter.write_line(f"  {leak}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    """Every span the in-process services finish, for the tracing tests."""
    provider = setup_tracing("helpline-tests", otlp_endpoint=None, record=True)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _WATCHED["spans"] = exporter
    return exporter


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server (JetStream) for the session; tests isolate by prefix.

    Its memory store is budgeted explicitly (nats-server's default is 75% of the machine's
    memory, so a leak of streams would fail on a small CI machine only): every in-memory
    stream with a byte limit (the request log, the trace store) reserves that limit, and
    the `prefix` fixture drops a test's streams when it ends."""
    with NatsServer(tmp_path_factory.mktemp("nats"), max_memory_store=TEST_MEMORY_STORE) as server:
        yield server


#: The session server's memory store: a handful of systems alive at once, each reserving
#: the request log's and the trace store's byte limits, with room to spare.
TEST_MEMORY_STORE = 3 * 1024**3


def drop_streams(nats_url: str, prefix: str) -> None:
    """Delete every stream and bucket of `prefix` on the server (their reservations too).
    Run in a thread of its own: it is called from fixture teardown, outside the test's loop."""

    async def drop() -> None:
        upper = prefix.upper().replace(".", "_")
        owned = (f"{upper}_", f"KV_{upper}_", f"OBJ_{upper}_")
        connection = await nats.connect(nats_url, name=f"drop-{prefix}")
        try:
            js = connection.jetstream()
            for info in await js.streams_info():
                name = info.config.name or ""
                if name.upper().startswith(owned):
                    await js.delete_stream(name)
        finally:
            await connection.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, drop()).result(timeout=30)


@pytest.fixture
async def bus(nats_server: NatsServer, prefix: str) -> AsyncIterator[Bus]:
    """A bus of the test's own, its streams and buckets declared (in memory)."""
    running = Bus(BusLayout(prefix=prefix, file_storage=False))
    await running.connect(nats_server.url, name=f"test-{prefix}")
    await running.bootstrap()
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture(scope="session")
def model() -> Embedder:
    return Embedder.load(threads=2)


@pytest.fixture
def prefix(nats_server: NatsServer) -> Iterator[str]:
    """Each test gets its own subjects, streams and buckets, deleted when it ends."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    drop_streams(nats_server.url, name)


@pytest.fixture(scope="session")
def docs_site() -> Iterator[str]:
    """The sample documentation site on 127.0.0.1, with a page that never answers in time."""
    with serve_site(SITE, routes={"/troubleshooting/slow.html": slow_route(3.0)}) as url:
        yield url


@dataclass
class System:
    client: httpx.AsyncClient
    host: Host
    knowledge: Knowledge


def settings_for(cls: type, nats_url: str, prefix: str, data_dir: Path, **extra: object) -> object:
    base: dict[str, object] = {
        "nats_url": nats_url,
        "bus_prefix": prefix,
        "data_dir": data_dir,
        "file_storage": False,
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.2,
        "max_deliver": 2,
        "scraper_allowed_hosts": "127.0.0.1",
        "scraper_timeout_s": 1.0,
        # Extraction in a thread: dozens of systems start here, and worker processes take
        # a second each to import (services/scraper/tests/test_parsing.py covers them).
        "scraper_extract_processes": 0,
        # Indexing shares the session's model rather than loading a niced one per system.
        "embed_index_niceness": 0,
        "query_timeout_s": 10.0,
        # No scheduled maintenance unless a test asks: it would add tasks of its own.
        "maintenance_reconcile_every_s": 0.0,
        "maintenance_watchdog_every_s": 0.0,
        # Every request of the tests sends it (`System.client`).
        "admin_key": TEST_ADMIN_KEY,
    }
    base.update(extra)
    return cls(**{k: v for k, v in base.items() if k in cls.model_fields})  # type: ignore[attr-defined]


async def start_system(
    nats_url: str,
    prefix: str,
    data_dir: Path,
    model: Embedder,
    *,
    store: VectorStore | None = None,
    without: frozenset[str] = frozenset(),
    **extra: object,
) -> System:
    """Every service on one bus connection, as `helpline up` runs them, with a client for the API."""
    store = store or open_store(
        url=extra.get("qdrant_url"),  # type: ignore[arg-type]
        data_dir=data_dir,
        collection=str(extra.get("collection", "helpline")),
        dim=model.dim,
    )
    knowledge = Knowledge(model=model, store=store)
    gateway = GatewayComponent(settings_for(GatewaySettings, nats_url, prefix, data_dir, **extra))  # type: ignore[arg-type]
    components = [
        gateway,
        ScraperComponent(settings_for(ScraperSettings, nats_url, prefix, data_dir, **extra)),  # type: ignore[arg-type]
        EmbedderComponent(
            settings_for(EmbedderSettings, nats_url, prefix, data_dir, **extra), knowledge=knowledge
        ),  # type: ignore[arg-type]
        RagComponent(
            settings_for(RagSettings, nats_url, prefix, data_dir, **extra), knowledge=knowledge
        ),  # type: ignore[arg-type]
        MaintenanceComponent(
            settings_for(MaintenanceSettings, nats_url, prefix, data_dir, **extra)
        ),  # type: ignore[arg-type]
    ]
    components = [c for c in components if c.name not in without]
    host = Host(gateway.settings, components, name=f"test-{prefix}")  # type: ignore[arg-type]
    await host.start()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app),
        base_url="http://gateway",
        headers=bearer(TEST_ADMIN_KEY),
    )
    return System(client=client, host=host, knowledge=knowledge)


async def stop_system(system: System) -> None:
    await system.client.aclose()
    await system.host.stop()
    system.knowledge.close()


@pytest.fixture
async def system(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder
) -> AsyncIterator[System]:
    running = await start_system(nats_server.url, prefix, tmp_path, model)
    try:
        yield running
    finally:
        await stop_system(running)
