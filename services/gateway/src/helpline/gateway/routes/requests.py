"""The views over every gateway replica's requests: stats, slow requests, errors."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from helpline.gateway import requestlog
from helpline.gateway.auth import GUARDED, requires
from helpline.gateway.keys import Scope
from helpline.gateway.routes.deps import TasksDep
from helpline.gateway.schemas import RequestStats

router = APIRouter(
    prefix="/metrics", tags=["metrics"], dependencies=[requires(Scope.ADMIN)], responses={**GUARDED}
)


def _log(request: Request) -> requestlog.RequestLog:
    log: requestlog.RequestLog = request.app.state.request_log
    return log


def _linked(request: Request, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    links: requestlog.TraceLinks | None = getattr(request.app.state, "trace_links", None)
    return entries if links is None else links.add(entries, str(request.base_url))


@router.get("/stats", response_model=RequestStats)
async def request_stats(
    request: Request,
    tasks: TasksDep,
    last_n: Annotated[int, Query(ge=1, le=requestlog.MAX_SCAN)] = 100,
) -> dict[str, Any]:
    """Per route and overall, over the last `last_n` requests of every replica: count,
    errors (5xx) and error rate, client errors (4xx), p50/p95/p99 and mean duration,
    requests per minute."""
    return requestlog.stats(await _log(request).tail(last_n))


@router.get("/slow-requests")
async def slow_requests(
    request: Request,
    tasks: TasksDep,
    threshold_ms: Annotated[float, Query(ge=0)] = 1000.0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    """Requests that took at least `threshold_ms`, newest first (of the last 10,000): time,
    method, route, status, duration_ms, trace_id (and trace_url, its page in the tracing UI),
    task_id where there is one."""
    entries = await _log(request).tail(requestlog.MAX_SCAN)
    return _linked(request, requestlog.slow(entries, threshold_ms, limit))


@router.get("/errors")
async def error_view(
    request: Request,
    tasks: TasksDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    include_4xx: bool = False,
) -> list[dict[str, Any]]:
    """Requests answered 5xx (with `include_4xx`, 4xx too) and tasks that failed, newest
    first, with the error, trace_id (and trace_url) and task_id."""
    entries = await _log(request).tail(requestlog.MAX_SCAN)
    found = await requestlog.errors(entries, tasks.store, limit=limit, include_4xx=include_4xx)
    return _linked(request, found)
