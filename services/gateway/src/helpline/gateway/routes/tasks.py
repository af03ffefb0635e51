"""Task records: read one, list them, cancel one."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from helpline.common.records import Status, TaskRecord, TaskView
from helpline.common.subjects import Kind
from helpline.gateway.auth import GUARDED, Caller, check_brand, requires, visible
from helpline.gateway.errors import TaskFinished, TaskNotFound
from helpline.gateway.keys import ApiKey, Scope
from helpline.gateway.routes.deps import TasksDep, valid_key
from helpline.gateway.schemas import ErrorBody
from helpline.gateway.tasks import Tasks

router = APIRouter(tags=["tasks"], dependencies=[requires(Scope.SUBMIT)], responses={**GUARDED})


@router.get("/tasks/{task_id}", response_model=TaskView, responses={404: {"model": ErrorBody}})
async def get_task(task_id: str, tasks: TasksDep, caller: Caller) -> TaskView:
    """One task's record."""
    return (await _record(tasks, task_id, caller)).view()


@router.delete(
    "/tasks/{task_id}",
    response_model=TaskView,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
async def cancel_task(task_id: str, tasks: TasksDep, caller: Caller) -> TaskView:
    """Cancel a task that has not finished (and a parent's unfinished children); running work
    stops at its next checkpoint."""
    record = await _record(tasks, task_id, caller)
    if record.status.terminal:
        raise TaskFinished(task_id, record.status)
    await tasks.cancel(record)
    for _ in range(100):  # the tracker applies the cancellation within milliseconds
        current = await tasks.store.get(task_id)
        if current is not None and current.status is Status.CANCELLED:
            return current.view()
        await asyncio.sleep(0.02)
    return (current or record).view()


NEXT_PAGE_HEADERS: dict[str, Any] = {
    "X-Next-Cursor": {
        "description": "Pass as `cursor` for the next page; absent on the last page.",
        "schema": {"type": "string"},
    },
    "Link": {
        "description": 'The next page\'s URL, `<...>; rel="next"` (RFC 8288); absent on the '
        "last page.",
        "schema": {"type": "string"},
    },
}


@router.get(
    "/tasks",
    response_model=list[TaskView],
    responses={200: {"headers": NEXT_PAGE_HEADERS}, 404: {"model": ErrorBody}},
)
async def list_tasks(
    request: Request,
    response: Response,
    tasks: TasksDep,
    caller: Caller,
    kind: Kind | None = None,
    status: Status | None = None,
    brand: Annotated[str | None, Query(max_length=100)] = None,
    parent: Annotated[
        str | None, Query(max_length=200, description="Only the children of this task.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[
        str | None,
        Query(
            max_length=300,
            description="The previous page's `X-Next-Cursor`: the records after that place "
            "in the order come next (any text is a place in it).",
        ),
    ] = None,
) -> list[TaskView]:
    """Task records, newest first (a brand-limited key: only its brands'), `limit` at a time;
    with `parent`, that task's children (the failed pages of a batch: `status=failed`). A
    parent not visible to the key is not found."""
    if brand is not None:
        check_brand(caller, brand)
    if parent is not None:
        await _record(tasks, parent, caller)
    brands = {brand} if brand is not None else caller.brand_set()
    records, next_place = await tasks.records(
        kind=kind,
        status=status,
        limit=limit,
        brands=brands,
        parent=parent,
        before=cursor,
    )
    if next_place is not None:
        response.headers["X-Next-Cursor"] = next_place
        following = request.url.include_query_params(cursor=next_place)
        response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return [r.view() for r in records]


async def _record(tasks: Tasks, task_id: str, caller: ApiKey) -> TaskRecord:
    record = await tasks.store.get(task_id) if valid_key(task_id) else None
    # Another brand's task is not found: whether it exists is not this key's to know.
    if record is None or not visible(caller, record.brand):
        raise TaskNotFound(task_id)
    return record
