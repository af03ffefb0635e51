"""Task records and the rules that move them: forward only, terminal is final."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from helpline.common.messages import EventType, PageRemoval, TaskError, TaskEvent, utcnow
from helpline.common.subjects import Kind, Priority


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {Status.SUCCEEDED, Status.FAILED, Status.EXPIRED, Status.CANCELLED}
#: The terminal states as the stored record spells them.
TERMINAL_STATUSES: frozenset[str] = frozenset(s.value for s in _TERMINAL)

_EVENT_STATUS = {
    EventType.STARTED: Status.RUNNING,
    EventType.RETRYING: Status.RETRYING,
    EventType.SUCCEEDED: Status.SUCCEEDED,
    EventType.FAILED: Status.FAILED,
    EventType.EXPIRED: Status.EXPIRED,
    EventType.CANCELLED: Status.CANCELLED,
}


class Progress(BaseModel):
    done: int = 0
    total: int = 0


class TaskView(BaseModel):
    """A task as clients see it."""

    task_id: str
    kind: Kind
    #: The brand the task works for (a crawl's pages: the crawl's); None: several or none.
    brand: str | None = None
    status: Status = Status.QUEUED
    priority: Priority = Priority.NORMAL
    attempts: int = 0
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    parent_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    trace_id: str | None = None


class TaskRecord(TaskView):
    """A task as stored in the `tasks` bucket."""

    # When the worker reported the state the record holds (orders events of one attempt).
    updated_at: datetime | None = None
    # The process that reported it (its heartbeat's replica id), when a worker did.
    replica: str | None = None
    # A removal batch's page and reason, for the announcement of its outcome (`page.removed`).
    removal: PageRemoval | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> TaskRecord:
        return cls.model_validate_json(raw)

    def view(self) -> TaskView:
        return TaskView.model_validate(
            self.model_dump(exclude={"updated_at", "replica", "removal"})
        )


def _phase(status: Status, attempts: int, at: datetime | None) -> tuple[int, int, float]:
    """Order of states: queued < active < terminal; within active, by attempt, then by time."""
    rank = 2 if status.terminal else (0 if status is Status.QUEUED else 1)
    return rank, attempts, at.timestamp() if at else 0.0


def apply_event(record: TaskRecord, event: TaskEvent) -> TaskRecord | None:
    """The record after `event`, or None when the event changes nothing (late or duplicate)."""
    if record.status.terminal:
        if event.type is EventType.STARTED and record.started_at is None:
            # Its end was applied first (events may be applied out of order): the status
            # stays final, the start time is still worth knowing.
            return record.model_copy(update={"started_at": event.at})
        return None
    if event.type in (EventType.CREATED, EventType.RECOUNT):
        return None
    if event.type is EventType.PROGRESSED:
        progress = Progress(
            done=event.progress_done if event.progress_done is not None else 0,
            total=event.progress_total if event.progress_total is not None else 0,
        )
        if record.progress == progress:
            return None
        return record.model_copy(update={"progress": progress})
    new_status = _EVENT_STATUS[event.type]
    old = _phase(record.status, record.attempts, record.updated_at)
    new = _phase(new_status, event.attempt, event.at)
    if new <= old and not new_status.terminal:
        return None
    update: dict[str, Any] = {
        "status": new_status,
        "attempts": max(record.attempts, event.attempt),
        "updated_at": event.at,
    }
    if record.trace_id is None and event.trace_id is not None:
        update["trace_id"] = event.trace_id
    if event.replica is not None:
        update["replica"] = event.replica
    if record.started_at is None:
        if event.started_at is not None:
            update["started_at"] = event.started_at
        elif new_status is Status.RUNNING:
            update["started_at"] = event.at
    if new_status.terminal:
        update["finished_at"] = event.at
        if event.result is not None:
            update["result"] = event.result
    if event.error is not None:
        update["error"] = event.error
    elif new_status is Status.RUNNING:
        update["error"] = record.error
    return record.model_copy(update=update)
