"""Hosting services in a process: the components on the bus, the process's HTTP front (the
gateway's API or a worker's probes), signals and the event loop.

Each service's entry point (`helpline-gateway`, `helpline-scraper`, ...; also what
`helpline run <service>` calls) runs one service with `run_service`; `helpline up` hosts
several with `serve` and `run_until_signalled`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from helpline.common import metrics
from helpline.common.health import HealthServer
from helpline.common.observability import setup_logging, setup_tracing
from helpline.common.runtime import Component, Host
from helpline.common.serving.settings import EventLoop, ServingSettings
from helpline.common.settings import HelplineSettings

log = logging.getLogger(__name__)


class Front(Protocol):
    """What answers on the process's HTTP port: the gateway's API, or a worker's probes."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


#: Builds a process's front from its settings, its host and the components it hosts.
FrontFactory = Callable[[HelplineSettings, Host, Sequence[Component]], Front]


class Companion(Protocol):
    """What a process runs beside its components (`helpline up`'s service processes)."""

    async def start(self) -> None: ...

    async def ended(self) -> str:
        """Returns, saying what happened, only if it ends on its own."""
        ...

    async def stop(self) -> None: ...


def probes(settings: HelplineSettings, host: Host, components: Sequence[Component]) -> Front:
    """A worker's front: /healthz and /readyz (bus connected, streams present) on its HTTP port."""
    return HealthServer(settings.http_host, settings.http_port, host.bus.streams_present)


async def serve(
    settings: HelplineSettings,
    components: list[Component],
    *,
    name: str,
    stop: asyncio.Event,
    front: FrontFactory | None = probes,
    companion: Companion | None = None,
) -> None:
    """Host `components` and serve `front` until `stop` is set; SystemExit(1) if `companion` ends first.

    Stopping goes front first (nothing new arrives), then the companion, then the components.
    """
    metrics.configure(settings.metrics)
    host = Host(settings.model_copy(), components, name=name)
    await host.start()
    http: Front | None = None
    try:
        if front is not None:
            http = front(settings, host, components)
            await http.start()
        if companion is not None:
            await companion.start()
        freeze_startup_objects()
        await _until_stopped(stop, companion)
    finally:
        if http is not None:
            await http.stop()
        if companion is not None:
            await companion.stop()
        await host.stop()


def freeze_startup_objects() -> None:
    """Move what startup loaded out of the garbage collector's sight, for the process's life."""
    # Modules, the model's session, the app's routes and schemas live as long as the process;
    # frozen, a full collection no longer walks them. Without this, the gateway's full
    # collections while it took a 10,000-URL batch held its loop 60-90 ms each, and a
    # question with it.
    gc.collect()
    gc.freeze()
    log.info("%d objects from startup frozen, out of the collector's sight", gc.get_freeze_count())


async def _until_stopped(stop: asyncio.Event, companion: Companion | None) -> None:
    """Until `stop` is set; SystemExit(1) if `companion` ends first."""
    stopping = asyncio.ensure_future(stop.wait())
    ending = asyncio.ensure_future(companion.ended()) if companion is not None else None
    waits = {stopping} if ending is None else {stopping, ending}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    if stop.is_set() or ending is None:
        return
    log.error("%s; stopping", ending.result())
    raise SystemExit(1)


def run_until_signalled(
    main: Callable[[asyncio.Event], Awaitable[None]], event_loop: EventLoop = "uvloop"
) -> None:
    """Run `main(stop)` on a new event loop; SIGINT and SIGTERM set `stop`."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as loop_runner:
        loop_runner.run(runner())


def run_service(
    name: str,
    settings: HelplineSettings,
    build: Callable[[], Component],
    *,
    front: FrontFactory = probes,
) -> None:
    """Run one service in this process, against the NATS server its settings name, until SIGTERM."""
    setup_logging(settings.log_level, json_lines=settings.log_json)
    setup_tracing(
        settings.otel_service_name or f"helpline-{name}",
        otlp_endpoint=settings.otlp_endpoint,
        record=settings.otel_traces_sampler is not None,
        store=settings.trace_store_on,
        store_ratio=settings.trace_store_ratio,
    )
    if not settings.nats_url:
        raise SystemExit(f"the {name} service needs HELPLINE_NATS_URL (or use `helpline up`)")
    component = build()
    run_until_signalled(
        lambda stop: serve(settings, [component], name=name, stop=stop, front=front),
        ServingSettings().event_loop,
    )
