"""The REST API, one router per resource: `API` under /api/v1; `PROBES` and the bus
contract (`CONTRACT`, /asyncapi.json) at the root."""

from __future__ import annotations

from fastapi import APIRouter

from helpline.gateway.routes import (
    admin,
    brands,
    cache,
    console,
    contract,
    dlq,
    documents,
    keys,
    metrics,
    probes,
    query,
    requests,
    sources,
    status,
    submit,
    tasks,
    traces,
    webhooks,
)

API_PREFIX = "/api/v1"
API: tuple[APIRouter, ...] = (
    submit.router,
    submit.maintenance,
    query.router,
    tasks.router,
    cache.router,
    dlq.router,
    status.router,
    requests.router,
    traces.router,
    keys.router,
    sources.writer,
    sources.reader,
    documents.router,
    webhooks.router,
    documents.writer,
    brands.reader,
    brands.admin,
    admin.router,
)
PROBES = probes.router
CONTRACT = contract.router
METRICS = metrics.router
TRACE_PAGE = traces.page
CONSOLE = console.router
