"""Task records: read one, list them, cancel one."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from helpline.common.records import Status, TaskRecord, TaskView
from helpline.common.subjects import Kind
from helpline.gateway.errors import TaskFinished, TaskNotFound
from helpline.gateway.routes.deps import TasksDep, valid_key
from helpline.gateway.schemas import ErrorBody
from helpline.gateway.tasks import Tasks

router = APIRouter(tags=["tasks"])


@router.get("/tasks/{task_id}", response_model=TaskView, responses={404: {"model": ErrorBody}})
async def get_task(task_id: str, tasks: TasksDep) -> TaskView:
    """One task's record."""
    return (await _record(tasks, task_id)).view()


@router.delete(
    "/tasks/{task_id}",
    response_model=TaskView,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
async def cancel_task(task_id: str, tasks: TasksDep) -> TaskView:
    """Cancel a task that has not finished (and a parent's unfinished children); running work
    stops at its next checkpoint."""
    record = await _record(tasks, task_id)
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
    kind: Kind | None = None,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[TaskView]:
    """Task records, newest first."""
    return [r.view() for r in await tasks.records(kind=kind, status=status, limit=limit)]


async def _record(tasks: Tasks, task_id: str) -> TaskRecord:
    record = await tasks.store.get(task_id) if valid_key(task_id) else None
    if record is None:
        raise TaskNotFound(task_id)
    return record
