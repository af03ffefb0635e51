"""Running services: all of them in one process (`up`) or one per process (`run`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from helpline.cli.settings import CliSettings, environment_with
from helpline.common.health import HealthServer
from helpline.common.natsserver import NatsServer
from helpline.common.observability import setup_logging, setup_tracing
from helpline.common.processes import die_with_parent, stop_process
from helpline.common.runtime import Component, Host

if TYPE_CHECKING:
    import uvicorn

    from helpline.common.knowledge import Knowledge

log = logging.getLogger("helpline.cli")

SERVICES = ("gateway", "scraper", "embedder", "rag", "maintenance")


def _uvicorn_server(config: uvicorn.Config) -> uvicorn.Server:
    """Uvicorn without its own signal handling: the runner owns shutdown order."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


def build_component(name: str, nats_url: str, knowledge: Knowledge | None = None) -> Component:
    """One service's component, its settings read from the environment.

    Each service's code is imported here, for that service only: a process running one
    service does not load the others' libraries (the model runtime, the vector store's
    client, the browser driver, the web framework), and starts in a fraction of the time.
    """
    match name:
        case "gateway":
            from helpline.gateway.app import GatewayComponent
            from helpline.gateway.settings import GatewaySettings

            return GatewayComponent(GatewaySettings(nats_url=nats_url))
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


async def serve(
    settings: CliSettings,
    components: list[Component],
    *,
    name: str,
    stop: asyncio.Event,
    children: Sequence[str] = (),
) -> None:
    """Host the components; serve the gateway's API, or a worker's probes, until `stop`.

    `children` (`helpline up`): services run as child processes of their own (`helpline run
    <service>`), stopped after the gateway and before the components here; one that exits
    on its own stops everything (status 1).
    """
    host = Host(settings.model_copy(), components, name=name)
    await host.start()
    gateway = next((c for c in components if c.name == "gateway"), None)
    server: uvicorn.Server | None = None
    health: HealthServer | None = None
    serving: asyncio.Task[None] | None = None
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        if gateway is not None:
            import uvicorn

            from helpline.gateway.app import GatewayComponent

            assert isinstance(gateway, GatewayComponent)
            config = uvicorn.Config(
                gateway.app,
                host=settings.http_host,
                port=settings.http_port,
                log_config=None,
                access_log=False,
            )
            server = _uvicorn_server(config)
            serving = asyncio.create_task(server.serve())
            while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn exposes a flag only
                await asyncio.sleep(0.02)
            if serving.done():
                serving.result()
                raise RuntimeError(
                    f"the gateway could not listen on {settings.http_host}:{settings.http_port}"
                )
            log.info("gateway listening on http://%s:%d", settings.http_host, settings.http_port)
        elif not children:
            health = HealthServer(settings.http_host, settings.http_port, host.bus.streams_present)
            await health.start()
        for service in children:
            processes[service] = _spawn_service(settings, service)
        _freeze_startup_objects()
        await _until_stopped(stop, processes)
    finally:
        if server is not None and serving is not None:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
        # A gateway first, so nothing new arrives while the workers finish.
        for service in sorted(processes, key=lambda name: name != "gateway"):
            await asyncio.to_thread(stop_process, processes[service], 30.0)
        if health is not None:
            await health.stop()
        await host.stop()


def _freeze_startup_objects() -> None:
    """What startup loaded (modules, the model's session, the app's routes and schemas)
    lives as long as the process: moved out of the collector's sight, a full collection no
    longer walks it. Without this, the gateway's full collections while it took a
    10,000-URL batch held its loop 60-90 ms each, and a question with it."""
    gc.collect()
    gc.freeze()
    log.info("%d objects from startup frozen, out of the collector's sight", gc.get_freeze_count())


async def _until_stopped(
    stop: asyncio.Event, processes: dict[str, subprocess.Popen[bytes]]
) -> None:
    """Until `stop` is set; SystemExit(1) if one of `processes` exits first."""
    waits = {asyncio.ensure_future(asyncio.to_thread(p.wait)): n for n, p in processes.items()}
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({*waits, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if stop.is_set():
        return
    name = next(waits[w] for w in done if w in waits)
    log.error("the %s process exited (status %s); stopping", name, processes[name].returncode)
    raise SystemExit(1)


def _spawn_service(settings: CliSettings, service: str) -> subprocess.Popen[bytes]:
    overrides = {"HELPLINE_NATS_URL": settings.nats_url or ""}
    if service != "gateway":
        overrides["HELPLINE_HTTP_PORT"] = "0"  # its probes on any free port, not the API's
    return subprocess.Popen(
        [sys.executable, "-c", "from helpline.cli.main import app; app()", "run", service],
        env=environment_with(overrides),
        # Its own session: a terminal's Ctrl-C reaches this process, which stops it in order.
        start_new_session=True,
        preexec_fn=die_with_parent if sys.platform == "linux" else None,
    )


def _run(main: Callable[[asyncio.Event], object], event_loop: str = "uvloop") -> None:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)  # type: ignore[misc]

    factory = uvloop.new_event_loop if event_loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as loop_runner:
        loop_runner.run(runner())


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
    )
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    nats: NatsServer | None = None
    knowledge: Knowledge | None = None
    try:
        nats_url = settings.nats_url
        if not nats_url:
            nats = NatsServer(
                data_dir / "nats",
                port=settings.nats_port or None,
                sync_always=settings.nats_sync_always,
            ).start()
            nats_url = nats.url
            log.info("nats-server (JetStream, data in %s) on %s", data_dir / "nats", nats_url)
        from helpline.common.knowledge import Knowledge
        from helpline.common.settings import StoreSettings

        knowledge = Knowledge.open(StoreSettings(), data_dir)
        run_settings = settings.model_copy(update={"nats_url": nats_url})
        children = [n for n in SERVICES if n in settings.up_own_processes]
        components = [
            build_component(n, nats_url, knowledge) for n in SERVICES if n not in children
        ]
        _run(
            lambda stop: serve(
                run_settings, components, name="helpline", stop=stop, children=children
            ),
            settings.event_loop,
        )
    finally:
        if knowledge is not None:
            knowledge.close()
        if nats is not None:
            nats.stop()
        log.info("stopped")


def run(settings: CliSettings, service: str) -> None:
    """One service in this process, against the NATS server in HELPLINE_NATS_URL."""
    setup_logging(settings.log_level, json_lines=settings.log_json)
    setup_tracing(
        settings.otel_service_name or f"helpline-{service}",
        otlp_endpoint=settings.otlp_endpoint,
        record=settings.otel_traces_sampler is not None,
    )
    if not settings.nats_url:
        raise SystemExit("helpline run needs HELPLINE_NATS_URL (or use `helpline up`)")
    component = build_component(service, settings.nats_url)
    _run(lambda stop: serve(settings, [component], name=service, stop=stop), settings.event_loop)
