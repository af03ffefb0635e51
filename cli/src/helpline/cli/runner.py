"""Running services: all of them in one process (`up`) or one per process (`run`)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from helpline.cli.adminkey import ensure_admin_key
from helpline.cli.backupserve import BackupResponder
from helpline.cli.natsserver import USER as NATS_USER
from helpline.cli.natsserver import NatsServer, ensure_password, is_loopback
from helpline.cli.settings import CliSettings, environment_with
from helpline.common.observability import setup_logging, setup_tracing
from helpline.common.processes import start_child, stop_process
from helpline.common.runtime import Component
from helpline.common.serving import FrontFactory, probes, run_until_signalled, serve

if TYPE_CHECKING:
    from helpline.common.knowledge import Knowledge

log = logging.getLogger("helpline.cli")

SERVICES = ("gateway", "scraper", "embedder", "rag", "maintenance")


def build_component(
    name: str, nats_url: str, knowledge: Knowledge | None = None, *, admin_key: str | None = None
) -> Component:
    """One service's component, its settings read from the environment (the gateway's
    bootstrap admin key given as `admin_key` where `helpline up` made it).

    Each service's code is imported here, for that service only: a process running one
    service does not load the others' libraries (the model runtime, the vector store's
    client, the browser driver, the web framework), and starts in a fraction of the time.
    """
    match name:
        case "gateway":
            from helpline.gateway.app import GatewayComponent
            from helpline.gateway.settings import GatewaySettings

            gateway = GatewaySettings(nats_url=nats_url)
            if admin_key:
                gateway = gateway.model_copy(update={"admin_key": SecretStr(admin_key)})
            return GatewayComponent(gateway)
        case "scraper":
            from helpline.scraper.app import ScraperComponent
            from helpline.scraper.settings import ScraperSettings

            return ScraperComponent(ScraperSettings(nats_url=nats_url))
        case "embedder":
            from helpline.embedder.app import EmbedderComponent
            from helpline.embedder.settings import EmbedderSettings

            return EmbedderComponent(EmbedderSettings(nats_url=nats_url), knowledge=knowledge)
        case "rag":
            from helpline.rag.app import RagComponent
            from helpline.rag.settings import RagSettings

            return RagComponent(RagSettings(nats_url=nats_url), knowledge=knowledge)
        case "maintenance":
            from helpline.maintenance.app import MaintenanceComponent
            from helpline.maintenance.settings import MaintenanceSettings

            return MaintenanceComponent(MaintenanceSettings(nats_url=nats_url))
    raise ValueError(f"unknown service {name!r}; one of {', '.join(SERVICES)}")


class ServiceProcesses:
    """`helpline up`'s services that run as processes of their own (`helpline run <service>`)."""

    def __init__(self, settings: CliSettings, services: Sequence[str]) -> None:
        self.settings = settings
        self.services = list(services)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    async def start(self) -> None:
        for service in self.services:
            self.processes[service] = _spawn_service(self.settings, service)

    async def ended(self) -> str:
        """Returns when one of the processes exits (a service down stops everything)."""
        waits = {
            asyncio.ensure_future(asyncio.to_thread(p.wait)): n for n, p in self.processes.items()
        }
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        name = waits[next(iter(done))]
        return f"the {name} process exited (status {self.processes[name].returncode})"

    async def stop(self) -> None:
        # A gateway first, so nothing new arrives while the workers finish.
        for service in sorted(self.processes, key=lambda name: name != "gateway"):
            await asyncio.to_thread(stop_process, self.processes[service], 30.0)


def front_for(services: Sequence[str], *, probes_port: int | None = None) -> FrontFactory:
    """The HTTP front of a process hosting `services`: the gateway's API where it is one of
    them; otherwise a worker's probes and metrics (on `probes_port` when the gateway, in a
    process of its own, has the HTTP port)."""
    if "gateway" in services:
        from helpline.gateway.server import api_front

        return api_front
    if probes_port is None:
        return probes
    return lambda settings, host, components: probes(
        settings.model_copy(update={"http_port": probes_port}), host, components
    )


def _spawn_service(settings: CliSettings, service: str) -> subprocess.Popen[bytes]:
    overrides = {"HELPLINE_NATS_URL": settings.nats_url or ""}
    if settings.admin_key is not None:
        overrides["HELPLINE_ADMIN_KEY"] = settings.admin_key.get_secret_value()
    if settings.nats_user is not None:
        overrides["HELPLINE_NATS_USER"] = settings.nats_user
    if settings.nats_password is not None:
        overrides["HELPLINE_NATS_PASSWORD"] = settings.nats_password.get_secret_value()
    if service != "gateway":
        overrides["HELPLINE_HTTP_PORT"] = "0"  # its probes on any free port, not the API's
    return start_child(
        [sys.executable, "-c", "from helpline.cli.main import app; app()", "run", service],
        env=environment_with(overrides),
        # Its own session: a terminal's Ctrl-C reaches this process, which stops it in order.
        start_new_session=True,
    )


def embedded_nats(settings: CliSettings, data_dir: Path) -> tuple[NatsServer, dict[str, object]]:
    """`helpline up`'s own nats-server, on HELPLINE_NATS_LISTEN (loopback by default);
    listening beyond loopback, it wants the password kept in the data dir. Returns it
    started, and the settings its clients connect with."""
    password: str | None = None
    if not is_loopback(settings.nats_listen):
        password, path = ensure_password(data_dir)
        log.info(
            "nats-server listens on %s: user %s, its password in %s",
            settings.nats_listen,
            NATS_USER,
            path,
        )
    nats = NatsServer(
        data_dir / "nats",
        host=settings.nats_listen,
        port=settings.nats_port or None,
        sync_always=settings.nats_sync_always,
        password=password,
    ).start()
    connection: dict[str, object] = {"nats_url": nats.url}
    if password is not None:
        connection.update(nats_user=NATS_USER, nats_password=SecretStr(password))
    return nats, connection


def up(settings: CliSettings) -> None:
    """Every service, our own nats-server unless a URL is set, Qdrant Edge unless one is.

    Embedder and rag share this process (and Qdrant Edge, which only one process may open);
    the services in HELPLINE_UP_OWN_PROCESSES (the gateway unless set) run as child
    processes, `helpline run <service>` against the same nats-server.
    """
    setup_logging(settings.log_level, json_lines=settings.log_json)
    setup_tracing(
        settings.otel_service_name or "helpline",
        otlp_endpoint=settings.otlp_endpoint,
        record=settings.otel_traces_sampler is not None,
        store=settings.trace_store_on,
        store_ratio=settings.trace_store_ratio,
    )
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if settings.admin_key is None:
        key, path, made = ensure_admin_key(data_dir)
        log.info(
            "admin API key %s %s (Authorization: Bearer <key>)", "made in" if made else "in", path
        )
        settings = settings.model_copy(update={"admin_key": SecretStr(key)})
    nats: NatsServer | None = None
    knowledge: Knowledge | None = None
    try:
        nats_url = settings.nats_url
        if not nats_url:
            nats, connection = embedded_nats(settings, data_dir)
            settings = settings.model_copy(update=connection)
            nats_url = nats.url
            log.info("nats-server (JetStream, data in %s) on %s", data_dir / "nats", nats_url)
        from helpline.common.knowledge import Knowledge
        from helpline.common.settings import StoreSettings

        store = StoreSettings()
        knowledge = Knowledge.open(store, data_dir)
        run_settings = settings.model_copy(update={"nats_url": nats_url})
        children = [n for n in SERVICES if n in settings.up_own_processes]
        in_process = [n for n in SERVICES if n not in children]
        admin_key = run_settings.admin_key.get_secret_value() if run_settings.admin_key else None
        components: list[Component] = [
            build_component(n, nats_url, knowledge, admin_key=admin_key) for n in in_process
        ]
        # Live backups: this process holds the store (`helpline backup`, /admin/backup).
        components.append(
            BackupResponder(
                knowledge,
                backup_dir=settings.backup_dir,
                collection=store.collection,
                store_kind="qdrant-edge" if store.qdrant_url is None else "qdrant-server",
            )
        )
        front = front_for(in_process, probes_port=settings.up_probes_port if children else None)
        companion = ServiceProcesses(run_settings, children) if children else None
        run_until_signalled(
            lambda stop: serve(
                run_settings,
                components,
                name="helpline",
                stop=stop,
                front=front,
                companion=companion,
            ),
            settings.event_loop,
        )
    finally:
        if knowledge is not None:
            knowledge.close()
        if nats is not None:
            nats.stop()
        log.info("stopped")


def run(service: str) -> None:
    """One service in this process: what its own entry point (`helpline-<service>`) runs."""
    module = importlib.import_module(f"helpline.{service}.__main__")
    main: Callable[[], None] = module.main
    main()
