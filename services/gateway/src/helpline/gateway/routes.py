"""REST routes: /api/v1/... and the probes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from helpline.common.answercache import AnswerCache
from helpline.common.chunking import chunk_document, text_document
from helpline.common.errors import BUS_ERRORS, InputRejected, Overloaded
from helpline.common.messages import (
    Answer,
    AnswerPart,
    BatchLimits,
    ChunkBatch,
    CrawlScope,
    CrawlTask,
    DeadLetter,
    MaintenanceTask,
    ScrapeTask,
    Source,
    TaskMessage,
    derived_id,
    utcnow,
)
from helpline.common.records import Progress, Status, TaskRecord, TaskView
from helpline.common.subjects import Kind, Priority
from helpline.gateway import deadletters, views
from helpline.gateway.schemas import (
    Accepted,
    CacheCleared,
    CacheStats,
    CrawlRequest,
    DeadLetterView,
    EmbedDocument,
    EmbedRequest,
    ErrorBody,
    MaintenanceRequest,
    QueryRequest,
    QueryResponse,
    ReplayAccepted,
    ReplayRequest,
    ReplicaBreakers,
    ScrapeBatchRequest,
    ScrapeRequest,
    SourceOut,
)
from helpline.gateway.tasks import SLICE, QueryTimeout, Tasks, task_id_for

T = TypeVar("T")
api = APIRouter(prefix="/api/v1")
probes = APIRouter()

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", max_length=200, description="Same key, same task, published once."
    ),
]
RETRY_AFTER_S = 5


async def get_tasks(request: Request) -> Tasks:
    # Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread
    # hop on every request for a lookup.
    tasks: Tasks | None = getattr(request.app.state, "tasks", None)
    if tasks is None:
        raise HTTPException(503, "the gateway is starting", headers={"Retry-After": "1"})
    return tasks


TasksDep = Annotated[Tasks, Depends(get_tasks)]
REFUSED: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "The bus refused the task; retry later."}
}


def deadline_after(seconds: float | None) -> datetime | None:
    return utcnow() + timedelta(seconds=seconds) if seconds is not None else None


def accepted(request: Request, task_id: str) -> Accepted:
    # The route's path spelled out: url_for would search every route on each submit.
    return Accepted(task_id=task_id, status_url=f"{request.base_url}api/v1/tasks/{task_id}")


async def enqueue(tasks: Tasks, kind: Kind, task: TaskMessage, request: Request) -> Accepted:
    """Record and publish a task; 503 with Retry-After when the bus refuses it."""
    try:
        # Without an Idempotency-Key the task id was just generated: no record can exist.
        fresh = request.headers.get("idempotency-key") is None
        record, _created = await tasks.submit(kind, task, fresh=fresh)
    except Overloaded as exc:
        raise HTTPException(503, exc.message, headers={"Retry-After": str(RETRY_AFTER_S)}) from exc
    return accepted(request, record.task_id).model_copy(update={"status": record.status.value})


async def submit(tasks: Tasks, kind: Kind, task: TaskMessage, request: Request) -> JSONResponse:
    body = await enqueue(tasks, kind, task, request)
    return JSONResponse(body.model_dump(), status_code=202)


async def built(items: list[T], make: Callable[[T], TaskMessage]) -> list[TaskMessage]:
    """A batch's children, built a slice at a time between turns of the event loop (a
    10,000-page batch takes a fifth of a second of CPU to build)."""
    children: list[TaskMessage] = []
    for start in range(0, len(items), SLICE):
        children.extend(make(item) for item in items[start : start + SLICE])
        await asyncio.sleep(0)
    return children


async def submit_parent(
    tasks: Tasks,
    kind: Kind,
    parent_id: str,
    priority: Priority,
    children: list[TaskMessage],
    request: Request,
) -> JSONResponse:
    """A parent task whose progress counts `children`, all published; 503 if they cannot fit."""
    parent = TaskRecord(
        task_id=parent_id,
        kind=kind,
        priority=priority,
        progress=Progress(done=0, total=len(children)),
    )
    try:
        record, _created = await tasks.submit_parent(kind, parent, children)
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
        deadline=deadline_after(body.deadline_s),
        url=body.url,
        brand=body.brand,
        scope=scope,
        render=body.render,
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
        deadline=deadline_after(body.deadline_s),
        url=body.url,
        brand=body.brand,
        render=body.render,
    )
    return await submit(tasks, Kind.SCRAPE, task, request)


@api.post("/scrape/batch", status_code=202, response_model=Accepted, responses=REFUSED)
async def scrape_batch(
    body: ScrapeBatchRequest, request: Request, tasks: TasksDep, key: IdempotencyKey = None
) -> JSONResponse:
    """Index a list of pages: a parent task whose progress counts its URLs; `max_concurrent`
    and `delay_ms` hold across every scraper replica."""
    parent_id = task_id_for(Kind.SCRAPE, key)
    deadline = deadline_after(body.deadline_s)
    limits = BatchLimits(max_concurrent=body.max_concurrent, delay_ms=body.delay_ms)
    children = await built(
        list(dict.fromkeys(body.urls)),
        lambda url: ScrapeTask(
            task_id=derived_id(parent_id, url),
            priority=body.priority,
            deadline=deadline,
            parent_id=parent_id,
            url=url,
            brand=body.brand,
            batch=limits,
            render=body.render,
        ),
    )
    return await submit_parent(tasks, Kind.SCRAPE, parent_id, body.priority, children, request)


@api.post("/embed", status_code=202, response_model=Accepted, responses=REFUSED)
async def embed_documents(
    body: EmbedRequest, request: Request, tasks: TasksDep, key: IdempotencyKey = None
) -> JSONResponse:
    """Index text that is not on a web page (FAQ entries, tickets): a parent task with one
    child per document."""
    parent_id = task_id_for(Kind.EMBED, key)
    deadline = deadline_after(body.deadline_s)
    now = utcnow()

    def child(numbered: tuple[int, EmbedDocument]) -> TaskMessage:
        index, doc = numbered
        doc_id = doc.id or str(index)
        url = doc.url or f"doc://{doc.brand}/{doc_id}"
        title = doc.title or doc.text[:80]
        child_id = derived_id(parent_id, doc_id)
        return ChunkBatch(
            task_id=child_id,
            priority=body.priority,
            deadline=deadline,
            parent_id=parent_id,
            url=url,
            title=title,
            brand=doc.brand,
            chunks=chunk_document(text_document(doc.text, url=url, title=title)),
            fetched_at=now,
            report_task_id=child_id,
            report_kind=Kind.EMBED,
        )

    children = await built(list(enumerate(body.documents)), child)
    return await submit_parent(tasks, Kind.EMBED, parent_id, body.priority, children, request)


@api.post("/maintenance/ping", status_code=202, response_model=Accepted, responses=REFUSED)
async def ping(
    request: Request,
    tasks: TasksDep,
    body: MaintenanceRequest | None = None,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """A no-op maintenance task: proves the maintenance service is consuming."""
    body = body or MaintenanceRequest()
    task = MaintenanceTask(
        task_id=task_id_for(Kind.MAINTENANCE, key),
        priority=body.priority,
        deadline=deadline_after(body.deadline_s),
        job="ping",
        params={"delay_ms": body.delay_ms} if body.delay_ms else {},
    )
    return await submit(tasks, Kind.MAINTENANCE, task, request)


@api.post(
    "/query",
    response_model=QueryResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "The answer; with `stream: true`, server-sent events "
            "`sources`, `delta` (answer text, in order), then `done`; `reset` (drop the text "
            "so far: the model failed part-way, the extractive answer follows) and `error` "
            "(`status`, `detail`) may occur once streaming began.",
        },
        502: {"model": ErrorBody, "description": "Answering failed."},
        504: {"model": ErrorBody, "description": "No answer before the deadline."},
        **REFUSED,
    },
)
async def query(body: QueryRequest, request: Request, tasks: TasksDep) -> Response:
    """Answer a question from the indexed documentation, with numbered sources.

    A question asked before (same normalised text, brand and top_k, and no change to the
    brand's index since) is answered from the answer cache without going to rag.
    """
    started = time.perf_counter()
    task_id = task_id_for(Kind.QUERY, None)
    key = (
        tasks.cache.key(body.question, body.brand, body.top_k)
        if tasks.cache is not None and body.cache
        else None
    )
    answer = await _cached(tasks, key)
    cached = answer is not None
    timeout_s: float = request.app.state.query_timeout_s
    if answer is None and body.stream:
        try:
            replies = await tasks.ask_streaming(
                body.question, body.brand, body.top_k, timeout_s, task_id, body.priority, key
            )
        except Overloaded as exc:
            raise HTTPException(
                503, exc.message, headers={"Retry-After": str(RETRY_AFTER_S)}
            ) from exc
        return _event_stream(_live_events(replies, task_id, started))
    if answer is None:
        answer = await _ask(body, tasks, task_id, timeout_s, key)
    result = _response(answer, task_id, started, cached=cached)
    if body.stream:
        return _event_stream(_answer_events(result))
    return Response(result.model_dump_json(), media_type="application/json")


async def _cached(tasks: Tasks, key: str | None) -> Answer | None:
    if key is None or tasks.cache is None:
        return None
    try:
        return await tasks.cache.get(key)
    except BUS_ERRORS:
        return None  # the cache is an optimisation: ask rag instead


async def _ask(
    body: QueryRequest, tasks: Tasks, task_id: str, timeout_s: float, key: str | None
) -> Answer:
    try:
        answer = await tasks.ask(
            body.question, body.brand, body.top_k, timeout_s, task_id, body.priority, key
        )
    except QueryTimeout as exc:
        raise HTTPException(504, f"the query was not answered before its deadline ({exc})") from exc
    except Overloaded as exc:
        raise HTTPException(503, exc.message, headers={"Retry-After": str(RETRY_AFTER_S)}) from exc
    if answer.error:
        raise HTTPException(502, f"the query failed: {answer.error}")
    return answer


def _response(answer: Answer, task_id: str, started: float, *, cached: bool) -> QueryResponse:
    return QueryResponse(
        answer=answer.answer,
        sources=[SourceOut.model_validate(s.model_dump()) for s in answer.sources],
        task_id=task_id,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        cached=cached,
        answer_mode=answer.answer_mode,
        fallback_reason=answer.fallback_reason,
    )


_PIECE = re.compile(r"\S+\s*")
WORDS_PER_DELTA = 4


def _event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _sources_event(sources: list[Source] | list[SourceOut]) -> bytes:
    return _sse("sources", {"sources": [s.model_dump() for s in sources]})


def _deltas(text: str) -> Iterator[bytes]:
    """A finished text as `delta` events of a few words each; joined, exactly `text`."""
    words = _PIECE.findall(text)
    lead = text[: len(text) - len(text.lstrip())]
    for start in range(0, len(words), WORDS_PER_DELTA):
        piece = "".join(words[start : start + WORDS_PER_DELTA])
        yield _sse("delta", {"text": lead + piece if start == 0 else piece})


def _done_event(result: QueryResponse) -> bytes:
    return _sse(
        "done",
        {
            "task_id": result.task_id,
            "duration_ms": result.duration_ms,
            "cached": result.cached,
            "answer_mode": result.answer_mode,
            "fallback_reason": result.fallback_reason,
        },
    )


async def _answer_events(result: QueryResponse) -> AsyncIterator[bytes]:
    """A finished answer (cached, or extractive) as events: sources, deltas, done."""
    yield _sources_event(result.sources)
    for delta in _deltas(result.answer):
        yield delta
    yield _done_event(result)


async def _live_events(
    replies: AsyncIterator[AnswerPart | Answer], task_id: str, started: float
) -> AsyncIterator[bytes]:
    """Rag's replies as events while they come: sources, deltas as generated, done.

    An extractive answer arrives whole and is cut into deltas here. If the model failed
    after some text was sent, `reset` tells the client to drop that text; the extractive
    answer's deltas follow. Failures after the stream began are `error` events.
    """
    sources_sent = False
    streamed: list[str] = []
    try:
        async for reply in replies:
            if isinstance(reply, AnswerPart):
                if reply.sources is not None and not sources_sent:
                    sources_sent = True
                    yield _sources_event(reply.sources)
                if reply.text:
                    streamed.append(reply.text)
                    yield _sse("delta", {"text": reply.text})
                continue
            if reply.error:
                yield _sse("error", {"status": 502, "detail": f"the query failed: {reply.error}"})
                return
            if not sources_sent:
                yield _sources_event(reply.sources)
            if streamed and "".join(streamed) != reply.answer:
                streamed.clear()
                yield _sse("reset", {"reason": reply.fallback_reason})
            if not streamed:
                for delta in _deltas(reply.answer):
                    yield delta
            yield _done_event(_response(reply, task_id, started, cached=False))
            return
    except QueryTimeout as exc:
        detail = f"the query was not answered before its deadline ({exc})"
        yield _sse("error", {"status": 504, "detail": detail})


@api.get("/cache/stats", response_model=CacheStats)
async def cache_stats(tasks: TasksDep) -> CacheStats:
    """The answer cache: this replica's hits and misses, and the shared bucket's size."""
    # A bus that does not answer is a 503 (app.py's handler for BUS_ERRORS).
    stats = await _cache(tasks).stats()
    return CacheStats.model_validate(dataclasses.asdict(stats))


@api.post("/cache/clear", response_model=CacheCleared)
async def cache_clear(tasks: TasksDep) -> CacheCleared:
    """Drop every cached answer, for every gateway replica."""
    cleared = await _cache(tasks).clear()
    return CacheCleared(cleared=cleared)


def _cache(tasks: Tasks) -> AnswerCache:
    if tasks.cache is None:
        raise HTTPException(404, "the answer cache is turned off (HELPLINE_ANSWER_CACHE=false)")
    return tasks.cache


@api.get("/tasks/{task_id}", response_model=TaskView, responses={404: {"model": ErrorBody}})
async def get_task(task_id: str, tasks: TasksDep) -> TaskView:
    """One task's record."""
    record = await tasks.get(task_id) if _valid_key(task_id) else None
    if record is None:
        raise HTTPException(404, f"no task with id {task_id!r}")
    return record.view()


@api.delete(
    "/tasks/{task_id}",
    response_model=TaskView,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
async def cancel_task(task_id: str, tasks: TasksDep) -> TaskView:
    """Cancel a task that has not finished (and a parent's unfinished children); running work
    stops at its next checkpoint."""
    record = await tasks.get(task_id) if _valid_key(task_id) else None
    if record is None:
        raise HTTPException(404, f"no task with id {task_id!r}")
    if record.status.terminal:
        raise HTTPException(409, f"task {task_id} already {record.status}")
    await tasks.cancel(record)
    for _ in range(100):  # the tracker applies the cancellation within milliseconds
        current = await tasks.get(task_id)
        if current is not None and current.status is Status.CANCELLED:
            return current.view()
        await asyncio.sleep(0.02)
    return (current or record).view()


@api.get("/queues")
async def queue_view(tasks: TasksDep) -> list[dict[str, Any]]:
    """Per kind and priority: pending, in flight, redelivered, oldest waiting task's age."""
    return await views.queues(tasks.bus)


@api.get("/workers")
async def worker_view(tasks: TasksDep) -> list[dict[str, Any]]:
    """Per service: replicas seen through heartbeats, configured concurrency, busy, last seen."""
    return views.workers(await tasks.replicas())


@api.get("/system/status")
async def system_status(tasks: TasksDep) -> dict[str, Any]:
    """Health, queues, workers, open breakers and the bus, in one view."""
    replicas = await tasks.replicas()
    ready = await tasks.bus.streams_present()
    open_breakers = [
        {"replica": r["replica"], **b}
        for r in replicas
        for b in r.get("breakers", [])
        if b["state"] != "closed"
    ]
    queue_rows = await views.queues(tasks.bus) if ready else []
    return {
        "status": "ok" if ready and not open_breakers else ("degraded" if ready else "down"),
        "bus": {
            "connected": tasks.bus.nc.is_connected,
            "streams_present": ready,
            "url": tasks.bus.nc.connected_url.netloc if tasks.bus.nc.connected_url else None,
        },
        "queues": queue_rows,
        "workers": views.workers(replicas),
        "open_breakers": open_breakers,
    }


@api.get("/tasks", response_model=list[TaskView])
async def list_tasks(
    tasks: TasksDep,
    kind: Kind | None = None,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[TaskView]:
    """Task records, newest first."""
    return [r.view() for r in await tasks.records(kind=kind, status=status, limit=limit)]


@api.get("/dlq", response_model=list[DeadLetterView])
async def dead_letters(
    tasks: TasksDep, kind: Kind | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[DeadLetterView]:
    """Tasks that gave up (after their last attempt, or unreadable), newest first."""
    letters = await deadletters.list_letters(tasks.bus, kind=kind, limit=limit)
    return [_letter_view(letter) for letter in letters]


@api.post(
    "/dlq/{task_id}/replay",
    status_code=202,
    response_model=ReplayAccepted,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, **REFUSED},
)
async def replay(
    task_id: str, request: Request, tasks: TasksDep, body: ReplayRequest | None = None
) -> JSONResponse:
    """Re-submit a dead task as a new task (low priority unless told); the letter is removed."""
    stored = await deadletters.find(tasks.bus, task_id) if _valid_key(task_id) else None
    if stored is None:
        raise HTTPException(404, f"no dead letter for task {task_id!r}")
    try:
        task = deadletters.replay_task(stored.letter, (body or ReplayRequest()).priority)
    except InputRejected as exc:
        raise HTTPException(409, exc.message) from exc
    queued = await enqueue(tasks, stored.letter.kind, task, request)
    await deadletters.forget(tasks.bus, stored)
    body_out = ReplayAccepted(**queued.model_dump(), replay_of=task_id)
    return JSONResponse(body_out.model_dump(), status_code=202)


@api.get("/breakers", response_model=list[ReplicaBreakers])
async def breakers(tasks: TasksDep) -> list[ReplicaBreakers]:
    """Every circuit breaker's state, per replica (from the replicas' heartbeats)."""
    return [ReplicaBreakers.model_validate(r) for r in await tasks.replicas()]


def _letter_view(letter: DeadLetter) -> DeadLetterView:
    try:
        task: dict[str, Any] | str = json.loads(letter.body)
    except ValueError:
        task = letter.body
    if not isinstance(task, dict):
        task = letter.body
    return DeadLetterView(
        task_id=letter.task_id,
        kind=str(letter.kind),
        priority=str(letter.priority) if letter.priority else None,
        attempts=letter.attempts,
        error=letter.error.model_dump(),
        failed_at=letter.failed_at,
        task=task,
    )


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
