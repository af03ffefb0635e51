"""The dead-letter store: list what gave up, replay one as a new task."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nats.js.errors import NotFoundError

from helpline.common import subjects
from helpline.common.bus import Bus
from helpline.common.messages import (
    TASK_MODELS,
    ChunkBatch,
    DeadLetter,
    ScrapeTask,
    TaskMessage,
    new_task_id,
)
from helpline.common.subjects import Kind, Priority
from helpline.gateway.errors import NotReplayable


@dataclass(frozen=True)
class Stored:
    seq: int
    letter: DeadLetter


async def list_letters(bus: Bus, *, kind: Kind | None, limit: int) -> list[DeadLetter]:
    """Newest first."""
    stream = subjects.dlq_stream(bus.layout.prefix)
    state = (await bus.js.stream_info(stream)).state
    letters: list[DeadLetter] = []
    seq = state.last_seq
    while seq >= max(state.first_seq, 1) and len(letters) < limit:
        try:
            raw = await bus.js.get_msg(stream, seq)
        except NotFoundError:  # replayed (deleted)
            seq -= 1
            continue
        seq -= 1
        letter = DeadLetter.model_validate_json(raw.data or b"{}")
        if kind is None or letter.kind is kind:
            letters.append(letter)
    return letters


async def find(bus: Bus, task_id: str) -> Stored | None:
    stream = subjects.dlq_stream(bus.layout.prefix)
    for kind in Kind:
        try:
            raw = await bus.js.get_last_msg(stream, subjects.dlq(kind, task_id, bus.layout.prefix))
        except NotFoundError:
            continue
        return Stored(seq=raw.seq or 0, letter=DeadLetter.model_validate_json(raw.data or b"{}"))
    return None


def replay_task(letter: DeadLetter, priority: Priority) -> TaskMessage:
    """The dead task as a new one: new id, the given priority, no deadline, on its own."""
    try:
        data: dict[str, Any] = json.loads(letter.body)
        task = TASK_MODELS[letter.kind].model_validate(data)
    except (ValueError, KeyError) as exc:
        raise NotReplayable from exc
    update: dict[str, Any] = {
        "task_id": new_task_id(),
        "priority": priority,
        "deadline": None,
        "parent_id": None,
    }
    if isinstance(task, ChunkBatch):
        update.update(report_task_id=update["task_id"], report_kind=Kind.EMBED)
    if isinstance(task, ScrapeTask):
        update["crawl"] = None
    return task.model_copy(update=update)


async def forget(bus: Bus, stored: Stored) -> None:
    """Remove a replayed letter from the store."""
    await bus.js.delete_msg(subjects.dlq_stream(bus.layout.prefix), stored.seq)
