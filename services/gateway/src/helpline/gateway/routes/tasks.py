"""Task records: read one, list them, cancel one."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

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


@router.get("/tasks", response_model=list[TaskView])
async def list_tasks(
    tasks: TasksDep,
    caller: Caller,
    kind: Kind | None = None,
    status: Status | None = None,
    brand: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[TaskView]:
    """Task records, newest first (a brand-limited key: only its brands')."""
    if brand is not None:
        check_brand(caller, brand)
    brands = {brand} if brand is not None else caller.brand_set()
    records = await tasks.records(kind=kind, status=status, limit=limit, brands=brands)
    return [r.view() for r in records]


async def _record(tasks: Tasks, task_id: str, caller: ApiKey) -> TaskRecord:
    record = await tasks.store.get(task_id) if valid_key(task_id) else None
    # Another brand's task is not found: whether it exists is not this key's to know.
    if record is None or not visible(caller, record.brand):
        raise TaskNotFound(task_id)
    return record
