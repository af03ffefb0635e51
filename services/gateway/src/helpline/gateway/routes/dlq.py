"""Dead letters: list the tasks that gave up, replay one as a new task."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from helpline.common.messages import DeadLetter
from helpline.common.subjects import Kind
from helpline.gateway import deadletters
from helpline.gateway.errors import DeadLetterNotFound
from helpline.gateway.routes.deps import REFUSED, TasksDep, accepted, valid_key
from helpline.gateway.schemas import DeadLetterView, ErrorBody, ReplayAccepted, ReplayRequest

router = APIRouter(tags=["dead letters"])


@router.get("/dlq", response_model=list[DeadLetterView])
async def dead_letters(
    tasks: TasksDep, kind: Kind | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[DeadLetterView]:
    """Tasks that gave up (after their last attempt, or unreadable), newest first."""
    letters = await deadletters.list_letters(tasks.bus, kind=kind, limit=limit)
    return [_letter_view(letter) for letter in letters]


@router.post(
    "/dlq/{task_id}/replay",
    status_code=202,
    response_model=ReplayAccepted,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, **REFUSED},
)
async def replay(
    task_id: str, request: Request, tasks: TasksDep, body: ReplayRequest | None = None
) -> JSONResponse:
    """Re-submit a dead task as a new task (low priority unless told); the letter is removed."""
    stored = await deadletters.find(tasks.bus, task_id) if valid_key(task_id) else None
    if stored is None:
        raise DeadLetterNotFound(task_id)
    task = deadletters.replay_task(stored.letter, (body or ReplayRequest()).priority)
    # Through `Tasks`, which knows what a crawl needs first; the id was just generated.
    record, _created = await tasks.submit(stored.letter.kind, task, fresh=True)
    await deadletters.forget(tasks.bus, stored)
    body_out = ReplayAccepted(**accepted(request, record).model_dump(), replay_of=task_id)
    return JSONResponse(body_out.model_dump(), status_code=202)


def _letter_view(letter: DeadLetter) -> DeadLetterView:
    # The task as published when it parses as a JSON object; its raw text otherwise.
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
        trace_id=letter.trace_id,
        task=task,
    )
