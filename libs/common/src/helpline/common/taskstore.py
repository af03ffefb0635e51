"""Task records in the `tasks` bucket: created with their task, changed by compare-and-swap.

One `TaskStore` per process (`Bus.records`). It remembers the records it wrote most
recently with their revisions, so changing a record this process just wrote (the tracker
applying the outcome of a task its own gateway submitted) needs no read first. A stale
memory costs one failed compare-and-swap and a read, never a wrong write. Reads for
clients (`get`) always go to the bucket: another replica may have changed the record.

Writes are published with pipelined acknowledgements (`bus.Acks`), so many records can be
in flight at once (a batch submit, a tracker batch).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from nats.js.errors import KeyWrongLastSequenceError

from helpline.common.bus import BUS_ERRORS, TASKS_BUCKET, Overloaded, kv_get
from helpline.common.messages import TaskMessage
from helpline.common.records import Status, TaskRecord
from helpline.common.subjects import Kind

if TYPE_CHECKING:
    from helpline.common.bus import Bus

Change = Callable[[TaskRecord | None], TaskRecord | None]


class TaskStore:
    """Read, create and change task records; submit tasks together with their records."""

    def __init__(self, bus: Bus, *, remember: int = 20_000) -> None:
        self.bus = bus
        self._subject_prefix = f"$KV.{bus.layout.bucket(TASKS_BUCKET)}."
        self._remember = remember
        self._known: OrderedDict[str, tuple[TaskRecord, int]] = OrderedDict()

    def _keep(self, record: TaskRecord, revision: int) -> None:
        self._known[record.task_id] = (record, revision)
        self._known.move_to_end(record.task_id)
        if len(self._known) > self._remember:
            self._known.popitem(last=False)

    async def get(self, task_id: str) -> TaskRecord | None:
        """The stored record, read from the bucket."""
        current = await self._read(task_id)
        return current[0] if current else None

    async def _read(self, task_id: str) -> tuple[TaskRecord, int] | None:
        current = await kv_get(await self.bus.kv(TASKS_BUCKET), task_id)
        if current is None:
            return None
        return TaskRecord.from_bytes(current[0]), current[1]

    async def _write(self, record: TaskRecord, last: int) -> int:
        """Store `record` if the key's revision is `last` (0: if it has none); its revision."""
        try:
            revision = await self.bus.acks.publish(
                self._subject_prefix + record.task_id,
                record.to_bytes(),
                {"Nats-Expected-Last-Subject-Sequence": str(last)},
            )
        except KeyWrongLastSequenceError:
            self._known.pop(record.task_id, None)
            raise
        self._keep(record, revision)
        return revision

    async def create(self, record: TaskRecord) -> None:
        """Store a new record; `KeyWrongLastSequenceError` if the id has one."""
        try:
            await self._write(record, 0)
        except KeyWrongLastSequenceError:
            # A record purged after a refused submit leaves a marker behind; the bucket's
            # own create looks past it (and raises the same error if the record exists).
            kv = await self.bus.kv(TASKS_BUCKET)
            revision = await kv.create(record.task_id, record.to_bytes())
            self._keep(record, revision)

    async def change(self, task_id: str, change: Change) -> TaskRecord | None:
        """Apply `change` with compare-and-swap; the stored record, or None if unchanged."""
        current = self._known.get(task_id)
        while True:
            if current is None:
                current = await self._read(task_id)
            new = change(current[0] if current else None)
            if new is None:
                return None
            try:
                if current is None:
                    await self.create(new)
                else:
                    await self._write(new, current[1])
            except KeyWrongLastSequenceError:
                current = None
                continue
            return new

    async def forget(self, task_id: str) -> None:
        """Remove a record (its task was refused by the bus)."""
        self._known.pop(task_id, None)
        with contextlib.suppress(Exception):
            await (await self.bus.kv(TASKS_BUCKET)).purge(task_id)

    async def submit(
        self, kind: Kind, task: TaskMessage, *, fresh: bool = False
    ) -> tuple[TaskRecord, bool]:
        """Create the queued record and publish; returns (record, created). Idempotent by id.

        A record found still `queued` (a retry after a failed or timed-out submit) is
        published again: the bus's duplicate window and the workers' check of finished
        records make a second copy harmless, and a task that was never published now is.

        `fresh`: the id was just generated, so no record can exist and the record is
        written while the task is published, one round trip instead of two. A task the
        bus refused loses its record again: nothing is left half-way.
        """
        record = TaskRecord(
            task_id=task.task_id, kind=kind, priority=task.priority, parent_id=task.parent_id
        )
        if fresh:
            created, published = await asyncio.gather(
                self.create(record), self.bus.submit(kind, task), return_exceptions=True
            )
            if isinstance(published, BaseException):
                if not isinstance(created, BaseException):
                    await self.forget(task.task_id)
                raise published
            # Published but not recorded (the bucket timed out): the task runs, and the
            # tracker writes its record from the task's first event.
            if isinstance(created, BaseException) and not isinstance(created, Exception):
                raise created
            return record, True
        created_now = True
        try:
            await self.create(record)
        except KeyWrongLastSequenceError:
            existing = await self.get(task.task_id)
            if existing is None:
                raise Overloaded("the task store is busy; try again later") from None
            if existing.status is not Status.QUEUED:
                return existing, False
            record, created_now = existing, False
        except BUS_ERRORS as exc:
            raise Overloaded("the bus did not answer in time; try again later") from exc
        try:
            await self.bus.submit(kind, task)
        except BaseException:
            if created_now:
                await self.forget(task.task_id)
            raise
        return record, created_now

    async def submit_many(
        self, kind: Kind, tasks: Sequence[TaskMessage], *, in_flight: int = 512
    ) -> list[TaskRecord]:
        """Submit freshly generated tasks with their records, many in flight at once.

        Returns the records in order; raises the first refusal (`Overloaded`) after every
        submit has settled, and the tasks the bus refused keep no record.
        """
        room = asyncio.Semaphore(in_flight)

        async def one(task: TaskMessage) -> TaskRecord:
            async with room:
                record, _ = await self.submit(kind, task, fresh=True)
                return record

        outcomes = await asyncio.gather(*(one(t) for t in tasks), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [o for o in outcomes if isinstance(o, TaskRecord)]
