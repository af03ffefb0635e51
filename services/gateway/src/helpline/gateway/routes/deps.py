"""What every resource's routes share: the `Tasks` dependency, the Idempotency-Key header,
the 202 body and the documented refusal."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

from helpline.common.messages import utcnow
from helpline.common.records import TaskRecord
from helpline.gateway.errors import GatewayStarting
from helpline.gateway.schemas import Accepted, ErrorBody
from helpline.gateway.tasks import Tasks

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", max_length=200, description="Same key, same task, published once."
    ),
]
REFUSED: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "The bus refused the task; retry later."}
}


async def get_tasks(request: Request) -> Tasks:
    # Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread
    # hop on every request for a lookup.
    tasks: Tasks | None = getattr(request.app.state, "tasks", None)
    if tasks is None:
        raise GatewayStarting
    return tasks


TasksDep = Annotated[Tasks, Depends(get_tasks)]


def deadline_after(seconds: float | None) -> datetime | None:
    return utcnow() + timedelta(seconds=seconds) if seconds is not None else None


def accepted(request: Request, record: TaskRecord) -> Accepted:
    request.state.task_id = record.task_id  # for the request log
    # The route's path spelled out: url_for would search every route on each submit.
    return Accepted(
        task_id=record.task_id,
        status=record.status.value,
        status_url=f"{request.base_url}api/v1/tasks/{record.task_id}",
    )


def accepted_response(request: Request, record: TaskRecord) -> JSONResponse:
    return JSONResponse(accepted(request, record).model_dump(), status_code=202)


def valid_key(task_id: str) -> bool:
    """Whether `task_id` can be a bucket key at all (anything else is simply not found)."""
    return 0 < len(task_id) <= 128 and all(
        c.isascii() and (c.isalnum() or c in "-_") for c in task_id
    )
