"""Task records in the `tasks` bucket: created with their task, changed by compare-and-swap.

A `TaskStore` remembers the records it wrote most recently with their revisions, so
changing a record this process just wrote (the tracker applying the outcome of a task its
own gateway submitted) needs no read first. One that `follow`s the bucket also remembers
what every other process writes (a task submitted through the library elsewhere), as the
writes happen. A stale memory costs one failed compare-and-swap and a read, never a wrong
write. Reads for clients (`get`) always go to the bucket.

Writes are published with pipelined acknowledgements (`acks.Acks`), so many records can be
in flight at once (a batch submit, a tracker batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from nats.js import JetStreamContext, api
from nats.js.errors import KeyWrongLastSequenceError

from helpline.common.errors import BUS_ERRORS, BUS_SILENT, Overloaded
from helpline.common.kv import kv_create, kv_get
from helpline.common.kvscan import kv_entries
from helpline.common.messages import PageRemoval, TaskEvent, TaskMessage
from helpline.common.observability import current_trace_id
from helpline.common.records import TERMINAL_STATUSES, Status, TaskRecord
from helpline.common.subjects import Bucket, Kind

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from helpline.common.bus import Bus
    from helpline.common.kv import Buckets

Change = Callable[[TaskRecord | None], TaskRecord | None]
# A stored record's status, as `TaskRecord.to_bytes` writes it, when the task has ended.
_ENDED = re.compile(
    rb'"status":"(?:' + b"|".join(sorted(s.encode() for s in TERMINAL_STATUSES)) + rb')"'
)


async def record_finished(buckets: Buckets, task_id: str) -> bool:
    """Whether the task's record is already terminal (a redelivery then does nothing)."""
    current = await kv_get(await buckets.get(Bucket.TASKS), task_id)
    if current is None:
        return False
    try:
        return json.loads(current[0]).get("status") in TERMINAL_STATUSES
    except ValueError:
        return False


class TaskStore:
    """Read, create and change task records; submit tasks together with their records."""

    def __init__(self, bus: Bus, *, remember: int = 20_000, remember_ended: int = 1_000) -> None:
        self.bus = bus
        self._subject_prefix = f"$KV.{bus.layout.bucket(Bucket.TASKS)}."
        self._remember = remember
        self._remember_ended = remember_ended
        # A record as written (parsed, or the raw bytes a watch delivered) and its revision:
        # records of tasks still under way, and apart the few last that ended (an ended
        # record rarely changes again, and a gateway sees tens of thousands of them an hour:
        # kept with the others they filled the memory up to `remember` over hours).
        self._known: OrderedDict[str, tuple[TaskRecord | bytes, int]] = OrderedDict()
        self._ended: OrderedDict[str, tuple[TaskRecord | bytes, int]] = OrderedDict()
        self._following: JetStreamContext.PushSubscription | None = None
        self._outcome_prefix = f"_INBOX.{uuid.uuid4().hex}."
        self._outcomes: Subscription | None = None
        self._waiting: dict[str, asyncio.Future[TaskEvent]] = {}

    def _keep(self, task_id: str, record: TaskRecord | bytes, revision: int) -> None:
        known = self._known.get(task_id) or self._ended.get(task_id)
        if known is not None and known[1] >= revision:
            return  # a watch delivering a write this process already knows (or a later one)
        self._forget(task_id)
        ended = _ENDED.search(record) is not None if isinstance(record, bytes) else None
        if ended or (ended is None and isinstance(record, TaskRecord) and record.status.terminal):
            kept, limit = self._ended, self._remember_ended
        else:
            kept, limit = self._known, self._remember
        kept[task_id] = (record, revision)
        if len(kept) > limit:
            kept.popitem(last=False)

    def _forget(self, task_id: str) -> None:
        self._known.pop(task_id, None)
        self._ended.pop(task_id, None)

    def _remembered(self, task_id: str) -> tuple[TaskRecord, int] | None:
        kept = self._known if task_id in self._known else self._ended
        known = kept.get(task_id)
        if known is None:
            return None
        record, revision = known
        if isinstance(record, bytes):
            record = TaskRecord.from_bytes(record)
            kept[task_id] = (record, revision)
        return record, revision

    async def follow(self) -> None:
        """Remember every record written from now on, by any process."""
        self._following = await self.bus.js.subscribe(
            self._subject_prefix + ">",
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            cb=self._written,
        )

    async def _written(self, msg: Msg) -> None:
        if msg.data and not (msg.headers and msg.headers.get("KV-Operation")):
            self._keep(
                msg.subject[len(self._subject_prefix) :], msg.data, msg.metadata.sequence.stream
            )

    async def close(self) -> None:
        for sub in (self._following, self._outcomes):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self._following = self._outcomes = None
        for waiting in self._waiting.values():
            waiting.cancel()

    async def run(self, kind: Kind, task: TaskMessage, *, timeout_s: float = 30.0) -> TaskEvent:
        """Submit a task (fresh id) and wait for its outcome: the event that ended it
        (succeeded with its result, failed with its error, expired or cancelled). The
        record is written as usual; `TimeoutError` if no outcome came in time."""
        if self._outcomes is None:
            self._outcomes = await self.bus.nc.subscribe(
                self._outcome_prefix + "*", cb=self._outcome
            )
        outcome: asyncio.Future[TaskEvent] = asyncio.get_running_loop().create_future()
        self._waiting[task.task_id] = outcome
        try:
            notify = self._outcome_prefix + task.task_id
            await self.submit(kind, task.model_copy(update={"notify": notify}), fresh=True)
            return await asyncio.wait_for(outcome, timeout_s)
        finally:
            self._waiting.pop(task.task_id, None)

    async def _outcome(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject[len(self._outcome_prefix) :])
        if waiting is not None and not waiting.done():
            try:
                waiting.set_result(TaskEvent.model_validate_json(msg.data))
            except ValueError as exc:
                waiting.set_exception(exc)

    async def get(self, task_id: str) -> TaskRecord | None:
        """The stored record, read from the bucket."""
        current = await self.read(task_id)
        return current[0] if current else None

    async def scan(self, *, match: Callable[[bytes], bool] | None = None) -> list[TaskRecord]:
        """Every stored record (those `match` lets through, judged on the raw JSON first), read
        in one pass over the bucket rather than a request per record."""
        kv = await self.bus.buckets.get(Bucket.TASKS)
        # By id: a record rewritten during the pass comes again, its later value last.
        found: dict[str, bytes] = {}
        async for entry in kv_entries(kv):
            if entry.value and (match is None or match(entry.value)):
                found[entry.key] = entry.value
            else:
                found.pop(entry.key, None)
        return [TaskRecord.from_bytes(value) for value in found.values()]

    async def read(self, task_id: str) -> tuple[TaskRecord, int] | None:
        """The stored record and its revision, read from the bucket."""
        current = await kv_get(await self.bus.buckets.get(Bucket.TASKS), task_id)
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
            self._forget(record.task_id)
            raise
        self._keep(record.task_id, record, revision)
        return revision

    async def create(self, record: TaskRecord) -> None:
        """Store a new record; `KeyWrongLastSequenceError` if the id has one."""
        try:
            await self._write(record, 0)
        except KeyWrongLastSequenceError:
            # A record purged after a refused submit leaves a marker behind; the bucket's
            # own create looks past it (and raises the same error if the record exists).
            kv = await self.bus.buckets.get(Bucket.TASKS)
            revision = await kv_create(kv, record.task_id, record.to_bytes())
            self._keep(record.task_id, record, revision)

    async def change(self, task_id: str, change: Change) -> TaskRecord | None:
        """Apply `change` with compare-and-swap; the stored record, or None if unchanged."""
        current = self._remembered(task_id)
        while True:
            if current is None:
                current = await self.read(task_id)
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
        self._forget(task_id)
        with contextlib.suppress(Exception):
            await (await self.bus.buckets.get(Bucket.TASKS)).purge(task_id)

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
        brand = getattr(task, "brand", None)
        removal = getattr(task, "removal", None)
        record = TaskRecord(
            task_id=task.task_id,
            kind=kind,
            brand=brand if isinstance(brand, str) else None,
            priority=task.priority,
            parent_id=task.parent_id,
            trace_id=current_trace_id(),
            removal=removal if isinstance(removal, PageRemoval) else None,
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
            raise Overloaded(BUS_SILENT) from exc
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
