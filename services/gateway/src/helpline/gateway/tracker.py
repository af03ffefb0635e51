"""The tracker: folds task events into task records with compare-and-swap.

One durable consumer shared by every gateway replica. States only move forward, a
terminal state is final and a duplicate event changes nothing (`records.apply_event`).
A child reaching a terminal state is added once to its parent's progress; the parent
finishes when every page it claimed has finished.

Events are pulled in batches (lingering pulls, as the task pools do) and grouped by task:
a task's events in one batch (a ping's `started` and `succeeded`) cost one read and one
compare-and-swap of its record, and different tasks are applied concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from opentelemetry import propagate, trace
from pydantic import ValidationError

from helpline.common import subjects
from helpline.common.bus import CRAWLS_BUCKET, TASKS_BUCKET, Bus, kv_get
from helpline.common.crawlstate import pages_claimed
from helpline.common.messages import EventType, TaskEvent
from helpline.common.worker import release_subscription
from helpline.gateway.records import Progress, Status, TaskRecord, apply_event

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("helpline.tracker")
#: Events taken per pull; a batch's events are grouped by task.
BATCH = 64

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
        self._loops: list[asyncio.Task[None]] = []
        self._subs: list[JetStreamContext.PullSubscription] = []
        self._slots = asyncio.Semaphore(16)
        self._stopping = False

    async def apply(self, event: TaskEvent) -> None:
        """Apply one event (idempotent)."""
        await self.apply_all([event])

    async def apply_all(self, events: list[TaskEvent]) -> None:
        """Apply one task's events, in order, with one compare-and-swap (idempotent)."""
        kv = await self.bus.kv(TASKS_BUCKET)
        first = events[0]

        def change(record: TaskRecord | None) -> TaskRecord | None:
            changed = record is None
            current = record or _record_for(first)
            for event in events:
                new = apply_event(current, event)
                if new is not None:
                    current, changed = new, True
            return current if changed else None

        updated = await update_record(kv, first.task_id, change)
        if updated is not None:
            for parent_id in {e.parent_id for e in events if e.type is EventType.CREATED}:
                if parent_id:
                    await self._refresh_parent_total(kv, parent_id)
        record = updated
        if record is None:
            current = await kv_get(kv, first.task_id)
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

    async def start(self, concurrency: int) -> None:
        """Bind the shared durable consumer and start pulling (`concurrency` tasks at once)."""
        lay = self.bus.layout
        config = lay.tracker_config()
        self._slots = asyncio.Semaphore(max(1, concurrency))
        # A few pulls in flight, so one batch being applied does not hold up the next.
        for _ in range(max(1, min(4, concurrency // 4))):
            sub = await self.bus.js.pull_subscribe_bind(
                config.durable_name or "", subjects.events_stream(lay.prefix)
            )
            self._subs.append(sub)
            self._loops.append(asyncio.create_task(self._pull(sub)))

    async def stop(self) -> None:
        """Stop pulling; batches being applied finish, unapplied events go back at once."""
        self._stopping = True
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        for sub in self._subs:
            await release_subscription(sub)
        self._subs.clear()

    async def _pull(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping:
            try:
                msgs = await sub.fetch(BATCH, timeout=5.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # disconnected, server restarting: try again shortly
                log.debug("tracker pull: %r", exc)
                await asyncio.sleep(0.5)
                continue
            groups: dict[str, list[tuple[Msg, TaskEvent]]] = {}
            for msg in msgs:
                try:
                    event = TaskEvent.model_validate_json(msg.data)
                except ValidationError as exc:
                    log.warning("dropping an unreadable event on %s: %s", msg.subject, exc)
                    with contextlib.suppress(Exception):
                        await msg.term()
                    continue
                groups.setdefault(event.task_id, []).append((msg, event))
            # Shielded: a batch pulled is applied and settled even when stopping.
            await asyncio.shield(asyncio.gather(*(self._apply_group(g) for g in groups.values())))

    async def _apply_group(self, group: list[tuple[Msg, TaskEvent]]) -> None:
        first, event = group[0]
        context = propagate.extract(first.headers or {})
        async with self._slots:
            with _tracer.start_as_current_span(
                f"{first.subject} process", context=context, kind=trace.SpanKind.CONSUMER
            ):
                try:
                    await self.apply_all([e for _, e in group])
                except Exception:
                    log.exception("applying %d events for task %s", len(group), event.task_id)
                    for msg, _ in group:
                        with contextlib.suppress(Exception):
                            await msg.nak(delay=1.0)
                    return
        for msg, _ in group:
            with contextlib.suppress(Exception):
                await msg.ack()
