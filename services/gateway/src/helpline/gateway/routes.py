"""REST routes: /api/v1/... and the probes."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from helpline.common.bus import Overloaded
from helpline.common.messages import CrawlScope, CrawlTask, MaintenanceTask, ScrapeTask, TaskMessage
from helpline.common.subjects import Kind
from helpline.gateway.records import Status, TaskView
from helpline.gateway.schemas import (
    Accepted,
    CrawlRequest,
    ErrorBody,
    MaintenanceRequest,
    QueryRequest,
    QueryResponse,
    ScrapeRequest,
    SourceOut,
)
from helpline.gateway.tasks import QueryTimeout, Tasks, task_id_for

api = APIRouter(prefix="/api/v1")
probes = APIRouter()

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", max_length=200, description="Same key, same task, published once."
    ),
]
RETRY_AFTER_S = 5


def get_tasks(request: Request) -> Tasks:
    tasks: Tasks | None = getattr(request.app.state, "tasks", None)
    if tasks is None:
        raise HTTPException(503, "the gateway is starting", headers={"Retry-After": "1"})
    return tasks


TasksDep = Annotated[Tasks, Depends(get_tasks)]
REFUSED: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "The bus refused the task; retry later."}
}


def accepted(request: Request, task_id: str) -> Accepted:
    return Accepted(task_id=task_id, status_url=str(request.url_for("get_task", task_id=task_id)))


async def submit(tasks: Tasks, kind: Kind, task: TaskMessage, request: Request) -> JSONResponse:
    try:
        record, _created = await tasks.submit(kind, task)
    except Overloaded as exc:
        raise HTTPException(503, exc.message, headers={"Retry-After": str(RETRY_AFTER_S)}) from exc
    body = accepted(request, record.task_id).model_copy(update={"status": record.status.value})
    return JSONResponse(body.model_dump(), status_code=202)


@api.post("/crawl", status_code=202, response_model=Accepted, responses=REFUSED)
async def crawl(
    body: CrawlRequest, request: Request, tasks: TasksDep, key: IdempotencyKey = None
) -> JSONResponse:
    """Crawl a documentation site: a parent task whose pages are child scrape tasks."""
    scope = CrawlScope(
        root_url=body.url,
        max_pages=body.max_pages,
        max_depth=body.max_depth,
        include=body.include or [],
        exclude=body.exclude or [],
    )
    task = CrawlTask(
        task_id=task_id_for(Kind.CRAWL, key),
        priority=body.priority,
        url=body.url,
        brand=body.brand,
        scope=scope,
    )
    return await submit(tasks, Kind.CRAWL, task, request)


@api.post("/scrape", status_code=202, response_model=Accepted, responses=REFUSED)
async def scrape(
    body: ScrapeRequest, request: Request, tasks: TasksDep, key: IdempotencyKey = None
) -> JSONResponse:
    """Scrape and index one page."""
    task = ScrapeTask(
        task_id=task_id_for(Kind.SCRAPE, key),
        priority=body.priority,
        url=body.url,
        brand=body.brand,
    )
    return await submit(tasks, Kind.SCRAPE, task, request)


@api.post("/maintenance/ping", status_code=202, response_model=Accepted, responses=REFUSED)
async def ping(
    request: Request,
    tasks: TasksDep,
    body: MaintenanceRequest | None = None,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """A no-op maintenance task: proves the maintenance service is consuming."""
    priority = body.priority if body else MaintenanceRequest().priority
    task = MaintenanceTask(
        task_id=task_id_for(Kind.MAINTENANCE, key), priority=priority, job="ping"
    )
    return await submit(tasks, Kind.MAINTENANCE, task, request)


@api.post(
    "/query",
    response_model=QueryResponse,
    responses={
        504: {"model": ErrorBody, "description": "No answer before the deadline."},
        **REFUSED,
    },
)
async def query(body: QueryRequest, request: Request, tasks: TasksDep) -> QueryResponse:
    """Answer a question from the indexed documentation, with numbered sources."""
    started = time.perf_counter()
    timeout_s: float = request.app.state.query_timeout_s
    task_id = task_id_for(Kind.QUERY, None)
    try:
        answer = await tasks.ask(body.question, body.brand, body.top_k, timeout_s, task_id)
    except QueryTimeout as exc:
        raise HTTPException(504, f"the query was not answered before its deadline ({exc})") from exc
    except Overloaded as exc:
        raise HTTPException(503, exc.message, headers={"Retry-After": str(RETRY_AFTER_S)}) from exc
    if answer.error:
        raise HTTPException(502, f"the query failed: {answer.error}")
    return QueryResponse(
        answer=answer.answer,
        sources=[SourceOut.model_validate(s.model_dump()) for s in answer.sources],
        task_id=task_id,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@api.get("/tasks/{task_id}", response_model=TaskView, responses={404: {"model": ErrorBody}})
async def get_task(task_id: str, tasks: TasksDep) -> TaskView:
    """One task's record."""
    record = await tasks.get(task_id) if _valid_key(task_id) else None
    if record is None:
        raise HTTPException(404, f"no task with id {task_id!r}")
    return record.view()


@api.get("/tasks", response_model=list[TaskView])
async def list_tasks(
    tasks: TasksDep,
    kind: Kind | None = None,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[TaskView]:
    """Task records, newest first."""
    return [r.view() for r in await tasks.list(kind=kind, status=status, limit=limit)]


@probes.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@probes.get("/readyz", responses={503: {"model": ErrorBody}})
async def readyz(request: Request, response: Response) -> dict[str, str]:
    """The bus is connected and its streams exist."""
    tasks: Tasks | None = getattr(request.app.state, "tasks", None)
    if tasks is None or not await tasks.bus.streams_present():
        response.status_code = 503
        return {"status": "not ready"}
    return {"status": "ready"}


def _valid_key(task_id: str) -> bool:
    return 0 < len(task_id) <= 128 and all(c.isalnum() or c in "-_" for c in task_id)
