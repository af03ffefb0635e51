"""Gateway wiring: the FastAPI app, the tracker and the reply inbox on one bus connection."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from faststream.nats import NatsRouter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from helpline.common.bus import Bus
from helpline.common.errors import BUS_ERRORS, BUS_SILENT
from helpline.common.taskstore import TaskStore
from helpline.common.worker import TaskConsumer
from helpline.gateway.routes import API, API_PREFIX, PROBES
from helpline.gateway.routes.deps import RETRY_AFTER_S
from helpline.gateway.settings import GatewaySettings
from helpline.gateway.tasks import Tasks
from helpline.gateway.tracker import Tracker

log = logging.getLogger(__name__)


def create_app(settings: GatewaySettings) -> FastAPI:
    """The REST API; `GatewayComponent.start` attaches the bus to it."""
    app = FastAPI(
        title="Helpline",
        version="0.1.0",
        description="Crawl product documentation, keep it indexed, answer questions with cited sources.",
    )
    app.state.query_timeout_s = settings.query_timeout_s
    app.state.tasks = None
    for router in API:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(PROBES)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the field and the reason; never echo internals.
        errors = [
            {
                "field": ".".join(
                    str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")
                ),
                "location": str(err.get("loc", ("",))[0]),
                "message": str(err.get("msg", "invalid")),
                "type": str(err.get("type", "value_error")),
            }
            for err in exc.errors()
        ]
        return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)

    async def bus_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # A read the bus did not answer (a listing, a record): the client may retry.
        log.warning("%s %s: the bus did not answer (%r)", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": BUS_SILENT},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    for error in BUS_ERRORS:
        app.add_exception_handler(error, bus_unavailable)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    # One span per request; the ASGI send/receive spans under it say nothing a trace needs
    # and cost a fifth of a small request.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz,readyz", exclude_spans=["receive", "send"]
    )
    return app


class GatewayComponent:
    name = "gateway"

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.tasks: Tasks | None = None
        self.tracker: Tracker | None = None
        self.store: TaskStore | None = None

    def consumers(self, bus: Bus) -> list[TaskConsumer]:
        return []

    def routers(self, bus: Bus) -> list[NatsRouter]:
        return []

    async def start(self, bus: Bus) -> None:
        # One store, following the bucket: the tracker finds in memory the records this
        # gateway (or anyone) just submitted.
        store = self.store = TaskStore(bus)
        await store.follow()
        self.tasks = Tasks(bus, store, answer_cache=self.settings.answer_cache)
        await self.tasks.start()
        self.tracker = Tracker(bus, store, batch=self.settings.tracker_batch)
        await self.tracker.start()
        self.app.state.tasks = self.tasks

    async def stop(self) -> None:
        self.app.state.tasks = None
        if self.tracker is not None:
            await self.tracker.stop()
            self.tracker = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.tasks is not None:
            await self.tasks.stop()
