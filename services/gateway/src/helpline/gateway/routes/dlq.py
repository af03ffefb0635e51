"""Dead letters: list the tasks that gave up, replay one as a new task."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from helpline.common.messages import DeadLetter
from helpline.common.subjects import Kind
from helpline.gateway import deadletters
from helpline.gateway.auth import GUARDED, Caller, requires, visible
from helpline.gateway.errors import DeadLetterNotFound
from helpline.gateway.keys import ApiKey, Scope
from helpline.gateway.routes.deps import REFUSED, TasksDep, accepted, valid_key
from helpline.gateway.schemas import DeadLetterView, ErrorBody, ReplayAccepted, ReplayRequest
from helpline.gateway.tasks import Tasks

router = APIRouter(
    tags=["dead letters"], dependencies=[requires(Scope.ADMIN)], responses={**GUARDED}
)


@router.get("/dlq", response_model=list[DeadLetterView])
async def dead_letters(
    tasks: TasksDep,
    caller: Caller,
    kind: Kind | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[DeadLetterView]:
    """Tasks that gave up (after their last attempt, or unreadable), newest first (a
    brand-limited key: only its brands')."""
    views = [_letter_view(letter) for letter in await _letters(tasks, kind, limit, caller)]
    return [view for view in views if visible(caller, _brand(view.task))]


async def _letters(tasks: Tasks, kind: Kind | None, limit: int, caller: ApiKey) -> list[DeadLetter]:
    # A brand-limited key's letters are filtered after reading: read more of them.
    wanted = limit if caller.brands is None else min(limit * 10, 10_000)
    letters = await deadletters.list_letters(tasks.bus, kind=kind, limit=wanted)
    return letters


@router.post(
    "/dlq/{task_id}/replay",
    status_code=202,
    response_model=ReplayAccepted,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, **REFUSED},
)
async def replay(
    task_id: str,
    request: Request,
    tasks: TasksDep,
    caller: Caller,
    body: ReplayRequest | None = None,
) -> JSONResponse:
    """Re-submit a dead task as a new task (low priority unless told); the letter is removed."""
    stored = await deadletters.find(tasks.bus, task_id) if valid_key(task_id) else None
    if stored is None or not visible(caller, _brand(_letter_view(stored.letter).task)):
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


def _brand(task: dict[str, Any] | str) -> str | None:
    brand = task.get("brand") if isinstance(task, dict) else None
    return brand if isinstance(brand, str) else None
