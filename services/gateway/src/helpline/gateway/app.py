"""Gateway wiring: the FastAPI app, the tracker and the reply inbox on one bus connection."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from helpline.common.bus import Bus
from helpline.common.guard import AllowList
from helpline.common.taskpool import TaskConsumer
from helpline.common.taskstore import TaskStore
from helpline.common.webhooks import Announcer, DeliveryLog, WebhookStore
from helpline.gateway import errors, openapi
from helpline.gateway.freshness import Freshness
from helpline.gateway.keys import KeyStore
from helpline.gateway.limits import BoundedRequests
from helpline.gateway.ratelimit import RATE_HEADERS, RateLimiter
from helpline.gateway.requestlog import RequestLog, TraceLinks
from helpline.gateway.routes import (
    API,
    API_PREFIX,
    CONSOLE,
    CONTRACT,
    METRICS,
    PROBES,
    TRACE_PAGE,
)
from helpline.gateway.settings import GatewaySettings
from helpline.gateway.tasks import Tasks
from helpline.gateway.telemetry import RequestTelemetry
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
    app.state.bus_prefix = settings.bus_prefix
    app.state.backup_dir = settings.backup_dir
    app.state.tasks = None
    app.state.request_log = None
    app.state.trace_links = TraceLinks(settings.trace_ui_url, own_page=settings.trace_store_on)
    app.state.keys = None
    app.state.rate_limiter = None
    app.state.queries_in_flight = 0
    app.state.max_inflight_queries = settings.max_inflight_queries
    app.state.min_refresh_s = settings.min_refresh_s
    app.state.webhooks = None
    app.state.freshness = None
    app.state.webhook_allow = AllowList.parse(settings.webhook_allowed)
    for router in API:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(PROBES)
    app.include_router(CONTRACT)
    app.include_router(METRICS)
    app.include_router(TRACE_PAGE)
    app.include_router(CONSOLE)

    errors.install(app)

    # Inside the tracing middleware (added after it, so it runs within the request's span).
    templates = {id(r): API_PREFIX + getattr(r, "path", "") for a in API for r in a.routes}
    for router in (PROBES, CONTRACT, METRICS, TRACE_PAGE, CONSOLE):
        templates.update({id(r): getattr(r, "path", "") for r in router.routes})
    app.add_middleware(
        RequestTelemetry,
        templates=templates,
        count=settings.metrics,
        log_lines=settings.access_log,
    )
    # One span per request; the ASGI send/receive spans under it say nothing a trace needs
    # and cost a fifth of a small request.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz,readyz", exclude_spans=["receive", "send"]
    )
    # Outermost: a body over the limit is refused before anything reads it.
    app.add_middleware(BoundedRequests, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["X-Trace-Id", "Retry-After", *RATE_HEADERS],
        )
    openapi.document(app)
    return app


class GatewayComponent:
    name = "gateway"

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.tasks: Tasks | None = None
        self.tracker: Tracker | None = None
        self.store: TaskStore | None = None
        self.keys: KeyStore | None = None
        self.webhooks: WebhookStore | None = None

    def consumers(self, bus: Bus) -> list[TaskConsumer]:
        return []

    async def start(self, bus: Bus) -> None:
        # One store, following the bucket: the tracker finds in memory the records this
        # gateway (or anyone) just submitted.
        store = self.store = TaskStore(bus)
        await store.follow()
        self.tasks = Tasks(bus, store, answer_cache=self.settings.answer_cache)
        await self.tasks.start()
        webhooks = self.webhooks = WebhookStore(bus.buckets)
        await webhooks.follow()
        announcer = Announcer(webhooks, store, DeliveryLog(bus.buckets))
        self.tracker = Tracker(bus, store, batch=self.settings.tracker_batch)
        self.tracker.announcer = announcer
        await self.tracker.start()
        keys = self.keys = KeyStore(bus)
        await keys.follow()
        admin_key = self.settings.admin_key.get_secret_value() if self.settings.admin_key else ""
        if admin_key:
            await keys.bootstrap(admin_key)
        elif not keys.all():
            log.warning(
                "no API key exists and HELPLINE_ADMIN_KEY is unset: nobody can call the API"
            )
        self.app.state.rate_limiter = RateLimiter(bus, self.settings.default_rate_per_minute)
        self.app.state.keys = keys
        self.app.state.tasks = self.tasks
        self.app.state.request_log = RequestLog(bus)
        self.app.state.webhooks = announcer
        self.app.state.freshness = Freshness(self.tasks, self.settings.stale_after_s)

    async def stop(self) -> None:
        freshness, self.app.state.freshness = self.app.state.freshness, None
        if freshness is not None:
            await freshness.stop()
        self.app.state.tasks = None
        self.app.state.request_log = None
        self.app.state.keys = None
        self.app.state.webhooks = None
        if self.keys is not None:
            await self.keys.stop()
            self.keys = None
        if self.tracker is not None:
            await self.tracker.stop()
            self.tracker = None
        if self.webhooks is not None:
            await self.webhooks.stop()
            self.webhooks = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.tasks is not None:
            await self.tasks.stop()
