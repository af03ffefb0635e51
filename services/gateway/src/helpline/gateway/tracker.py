"""The tracker: folds task events into task records with compare-and-swap.

One durable consumer shared by every gateway replica. States only move forward, a
terminal state is final and a duplicate event changes nothing (`records.apply_event`).
A child reaching a terminal state is added once to its parent's progress; the parent
finishes when every page it claimed has finished.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsRouter, PullSub
from faststream.nats.annotations import NatsMessage
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from helpline.common import subjects
from helpline.common.bus import CRAWLS_BUCKET, TASKS_BUCKET, Bus, kv_get
from helpline.common.crawlstate import pages_claimed
from helpline.common.messages import EventType, TaskEvent
from helpline.gateway.records import Progress, Status, TaskRecord, apply_event

log = logging.getLogger(__name__)

Change = Callable[[TaskRecord | None], TaskRecord | None]


async def update_record(kv: KeyValue, task_id: str, change: Change) -> TaskRecord | None:
    """Apply `change` to a record with compare-and-swap; returns the stored record if changed."""
    while True:
        current = await kv_get(kv, task_id)
        record = TaskRecord.from_bytes(current[0]) if current else None
        new = change(record)
        if new is None:
            return None
        try:
            if current is None:
                await kv.create(task_id, new.to_bytes())
            else:
                await kv.update(task_id, new.to_bytes(), last=current[1])
        except KeyWrongLastSequenceError:
            continue
        return new


def _record_for(event: TaskEvent) -> TaskRecord:
    """A record for a task first seen through its events (a crawl's pages)."""
    return TaskRecord(
        task_id=event.task_id,
        kind=event.kind,
        priority=event.priority or subjects.Priority.NORMAL,
        parent_id=event.parent_id,
        created_at=event.created_at or event.at,
    )


class Tracker:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def apply(self, event: TaskEvent) -> None:
        """Apply one event (idempotent)."""
        kv = await self.bus.kv(TASKS_BUCKET)

        def change(record: TaskRecord | None) -> TaskRecord | None:
            if record is None:
                record = _record_for(event)
                return apply_event(record, event) or record
            return apply_event(record, event)

        updated = await update_record(kv, event.task_id, change)
        if event.type is EventType.CREATED and updated is not None and event.parent_id:
            await self._refresh_parent_total(kv, event.parent_id)
        record = updated
        if record is None:
            current = await kv_get(kv, event.task_id)
            record = TaskRecord.from_bytes(current[0]) if current else None
        if record and record.status.terminal and record.parent_id and not record.counted_in_parent:
            await self._count_child(kv, record)

    async def _refresh_parent_total(self, kv: KeyValue, parent_id: str) -> None:
        total = await pages_claimed(await self.bus.kv(CRAWLS_BUCKET), parent_id)

        def change(parent: TaskRecord | None) -> TaskRecord | None:
            if parent is None or parent.status.terminal:
                return None
            progress = parent.progress or Progress()
            if total <= progress.total:
                return None
            return parent.model_copy(update={"progress": Progress(done=progress.done, total=total)})

        await update_record(kv, parent_id, change)

    async def _count_child(self, kv: KeyValue, child: TaskRecord) -> None:
        """Add a finished child to its parent once, even when events race or repeat."""

        def claim(record: TaskRecord | None) -> TaskRecord | None:
            if record is None or record.counted_in_parent:
                return None
            return record.model_copy(update={"counted_in_parent": True})

        # Only the handler whose compare-and-swap sets the flag counts the child. A crash
        # between this and the parent's update would leave the parent short by one.
        if await update_record(kv, child.task_id, claim) is None:
            return
        parent_id = child.parent_id
        assert parent_id is not None
        claimed = await pages_claimed(await self.bus.kv(CRAWLS_BUCKET), parent_id)

        def change(parent: TaskRecord | None) -> TaskRecord | None:
            if parent is None or parent.status.terminal:
                return None
            progress = parent.progress or Progress()
            done = progress.done + 1
            total = max(progress.total, claimed, done)
            result: dict[str, Any] = dict(parent.result or {})
            ok = child.status is Status.SUCCEEDED
            result["pages_ok"] = int(result.get("pages_ok", 0)) + (1 if ok else 0)
            result["pages_failed"] = int(result.get("pages_failed", 0)) + (0 if ok else 1)
            chunks = (child.result or {}).get("chunks_indexed", 0) if ok else 0
            result["chunks_indexed"] = int(result.get("chunks_indexed", 0)) + int(chunks)
            update: dict[str, Any] = {
                "progress": Progress(done=done, total=total),
                "result": result,
            }
            if done >= total:
                update["status"] = Status.SUCCEEDED
                update["finished_at"] = child.finished_at
            return parent.model_copy(update=update)

        await update_record(kv, parent_id, change)

    def router(self, concurrency: int) -> NatsRouter:
        """The tracker's subscriber on every event, through the shared durable consumer."""
        lay = self.bus.layout
        config = lay.tracker_config()
        router = NatsRouter()

        @router.subscriber(
            config.filter_subject or "",
            stream=JStream(subjects.events_stream(lay.prefix), declare=False),
            durable=config.durable_name,
            config=config,
            pull_sub=PullSub(batch_size=1, timeout=1.0),
            max_workers=concurrency,
            ack_policy=AckPolicy.MANUAL,
            title="gateway-tracker",
        )
        async def on_event(event: TaskEvent, msg: NatsMessage) -> None:
            try:
                await self.apply(event)
            except Exception:
                log.exception("applying event %s for task %s", event.type, event.task_id)
                await msg.nack(delay=1.0)
                return
            await msg.ack()

        return router
