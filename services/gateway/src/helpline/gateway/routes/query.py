"""Asking a question: `POST /api/v1/query`, answered whole or as server-sent events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from helpline.common.errors import BUS_ERRORS
from helpline.common.messages import Answer, QueryTask, utcnow
from helpline.common.subjects import Kind
from helpline.gateway.auth import GUARDED, Caller, check_brand, requires
from helpline.gateway.errors import QueryFailed, TooManyQueries
from helpline.gateway.keys import Scope
from helpline.gateway.routes.deps import REFUSED, TasksDep
from helpline.gateway.routes.sse import answer_events, event_stream, live_events
from helpline.gateway.schemas import ErrorBody, QueryRequest, QueryResponse
from helpline.gateway.tasks import Tasks, task_id_for

router = APIRouter(tags=["query"], dependencies=[requires(Scope.QUERY)], responses={**GUARDED})


@router.post(
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
        429: {"model": ErrorBody, "description": "Rate limit, or too many questions at once."},
    },
)
async def query(body: QueryRequest, request: Request, tasks: TasksDep, caller: Caller) -> Response:
    """Answer a question from the indexed documentation, with numbered sources.

    A question asked before (same normalised text, brand and top_k, and no change to the
    brand's index since) is answered from the answer cache without going to rag. A key
    limited to brands searches only its brands when the question names none.
    """
    started = time.perf_counter()
    if body.brand is not None:
        check_brand(caller, body.brand)
    # A key of one brand asks in it; one of several brands asks in all of them (uncached).
    brand = body.brand or (caller.brands[0] if caller.brands and len(caller.brands) == 1 else None)
    brands = caller.brands if brand is None else None
    state = request.app.state
    if state.queries_in_flight >= state.max_inflight_queries:
        raise TooManyQueries(state.max_inflight_queries)
    state.queries_in_flight += 1
    try:
        response = await _answer(body, request, tasks, brand, brands, started)
    except BaseException:
        state.queries_in_flight -= 1
        raise
    if isinstance(response, StreamingResponse):
        response.body_iterator = _counted(response.body_iterator, state)
    else:
        state.queries_in_flight -= 1
    return response


async def _counted(events: AsyncIterable[Any], state: Any) -> AsyncIterator[Any]:
    """A streamed answer stays in flight until its last event is sent."""
    try:
        async for event in events:
            yield event
    finally:
        state.queries_in_flight -= 1


async def _answer(
    body: QueryRequest,
    request: Request,
    tasks: TasksDep,
    brand: str | None,
    brands: list[str] | None,
    started: float,
) -> Response:
    task_id = task_id_for(Kind.QUERY, None)
    request.state.task_id = task_id  # for the request log
    key = (
        tasks.cache.key(body.question, brand, body.top_k)
        if tasks.cache is not None and body.cache and brands is None
        else None
    )
    answer = await _cached(tasks, key)
    freshness = request.app.state.freshness
    if answer is not None:
        if freshness is not None:
            freshness.cited(answer.sources)
        result = QueryResponse.of(answer, task_id, started, cached=True)
        return event_stream(answer_events(result)) if body.stream else _json(result)
    timeout_s: float = request.app.state.query_timeout_s
    task = _query_task(body, tasks, task_id, timeout_s, key, brand, brands)
    if task.stream:
        replies = await tasks.ask_streaming(task, timeout_s)
        cited = freshness.cited if freshness is not None else None
        return event_stream(live_events(replies, task_id, started, cited))
    answer = await tasks.ask(task, timeout_s)
    if answer.error:
        raise QueryFailed(answer.error)
    if freshness is not None:
        freshness.cited(answer.sources)
    return _json(QueryResponse.of(answer, task_id, started, cached=False))


def _json(result: QueryResponse) -> Response:
    # Serialised once, by pydantic; returning the model would validate it a second time.
    return Response(result.model_dump_json(), media_type="application/json")


async def _cached(tasks: Tasks, key: str | None) -> Answer | None:
    if key is None or tasks.cache is None:
        return None
    try:
        return await tasks.cache.get(key)
    except BUS_ERRORS:
        return None  # the cache is an optimisation: ask rag instead


def _query_task(
    body: QueryRequest,
    tasks: Tasks,
    task_id: str,
    timeout_s: float,
    cache_key: str | None,
    brand: str | None,
    brands: list[str] | None,
) -> QueryTask:
    """The question as rag receives it; with `cache_key`, rag also stores its answer there."""
    now = utcnow()
    return QueryTask(
        task_id=task_id,
        priority=body.priority,
        deadline=now + timedelta(seconds=timeout_s),
        question=body.question,
        brand=brand,
        brands=brands,
        top_k=body.top_k,
        reply_to=tasks.reply_to(task_id),
        cache_key=cache_key,
        created_at=now,
        stream=body.stream,
    )
