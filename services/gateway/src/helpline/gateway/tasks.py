"""Submitting tasks and reading their records: what the routes call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC
from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyWrongLastSequenceError

from helpline.common.answercache import AnswerCache, Generations
from helpline.common.bus import Bus
from helpline.common.crawlstate import CrawlLedger
from helpline.common.errors import BUS_ERRORS, BUS_SILENT, Overloaded
from helpline.common.kv import Replicas
from helpline.common.messages import (
    REPLY_PART_HEADER,
    Answer,
    AnswerPart,
    EventType,
    QueryTask,
    TaskError,
    TaskEvent,
    TaskMessage,
    derived_id,
    new_task_id,
)
from helpline.common.observability import current_trace_id
from helpline.common.records import Progress, Status, TaskRecord
from helpline.common.subjects import Kind, Priority
from helpline.common.taskstore import TaskStore
from helpline.gateway.errors import QueryTimeout

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)


#: Children published (or built) between two turns of the event loop.
SLICE = 256


def task_id_for(kind: Kind, idempotency_key: str | None) -> str:
    """A fresh id, or the one an Idempotency-Key always maps to."""
    return derived_id("idem", str(kind), idempotency_key) if idempotency_key else new_task_id()


def place(record: TaskRecord) -> str:
    """A record's place in the listing's order, as text that sorts like it: its creation
    time (UTC, fixed width) and id. A page's cursor is the last place it showed."""
    return f"{record.created_at.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%fZ}|{record.task_id}"


class Tasks:
    """The gateway's side of the bus: create records, publish, wait for answers."""

    def __init__(self, bus: Bus, store: TaskStore, *, answer_cache: bool = True) -> None:
        self.bus = bus
        self.store = store
        self._inbox = f"{bus.layout.prefix}.replies.{uuid.uuid4().hex}"
        self._waiting: dict[str, asyncio.Future[Answer]] = {}
        self._streams: dict[str, asyncio.Queue[AnswerPart | Answer]] = {}
        self._sub: Subscription | None = None
        self._generations = Generations()
        self.cache = AnswerCache(bus, self._generations) if answer_cache else None

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        if self.cache is not None:
            await self._generations.start(self.bus)

    async def stop(self) -> None:
        await self._generations.stop()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for fut in self._waiting.values():
            fut.cancel()
        for stream in self._streams.values():
            stream.put_nowait(
                Answer(task_id="", answer="", sources=[], error="the gateway is stopping")
            )

    async def _on_reply(self, msg: Msg) -> None:
        task_id = msg.subject.rsplit(".", 1)[-1]
        stream = self._streams.get(task_id)
        if stream is not None:
            item: AnswerPart | Answer
            try:
                if msg.headers and msg.headers.get(REPLY_PART_HEADER):
                    item = AnswerPart.model_validate_json(msg.data)
                else:
                    item = Answer.model_validate_json(msg.data)
            except ValueError:
                item = Answer(task_id=task_id, answer="", sources=[], error="unreadable reply")
            stream.put_nowait(item)
            return
        fut = self._waiting.get(task_id)
        if fut is None or fut.done():
            return
        try:
            fut.set_result(Answer.model_validate_json(msg.data))
        except ValueError as exc:
            fut.set_exception(exc)

    async def submit(
        self, kind: Kind, task: TaskMessage, *, fresh: bool = False
    ) -> tuple[TaskRecord, bool]:
        """`TaskStore.submit`, for a task of any kind: a crawl is listed as an open parent
        first, so that the maintenance check can find it if it is left behind."""
        if kind is Kind.CRAWL:
            await self._mark_open(task.task_id)
        return await self.store.submit(kind, task, fresh=fresh)

    async def _mark_open(self, parent_id: str) -> None:
        try:
            await CrawlLedger(self.bus.buckets).mark_open(parent_id, time.time())
        except BUS_ERRORS as exc:
            raise Overloaded(BUS_SILENT) from exc

    async def submit_parent(
        self,
        kind: Kind,
        parent_id: str,
        priority: Priority,
        children: list[TaskMessage],
        *,
        brand: str | None = None,
    ) -> tuple[TaskRecord, bool]:
        """A parent record whose progress counts its children, then every child published.

        The stream's room is checked first, so a batch that cannot fit is refused whole. A
        retry (same Idempotency-Key) of a parent that is not finished publishes its children
        again: an earlier attempt may have stopped half-way, and their ids are derived, so
        the copies are dropped by the bus or find their work done.
        """
        parent = TaskRecord(
            task_id=parent_id,
            kind=kind,
            brand=brand,
            priority=priority,
            progress=Progress(done=0, total=len(children)),
            trace_id=current_trace_id(),
        )
        try:
            info = await self.bus.js.stream_info(self.bus.layout.task_stream(kind))
            room = (info.config.max_msgs or 0) - (info.state.messages or 0)
            if info.config.max_msgs and info.config.max_msgs > 0 and room < len(children):
                raise Overloaded(
                    f"the {kind} queue has room for {max(room, 0)} tasks, not {len(children)}"
                )
            await self._mark_open(parent.task_id)
            await self.store.create(parent)
            record, created = parent, True
        except KeyWrongLastSequenceError:
            existing = await self.store.get(parent.task_id)
            if existing is None:
                raise Overloaded("the task store is busy; try again later") from None
            if existing.status.terminal:
                return existing, False
            record, created = existing, False
        except BUS_ERRORS as exc:
            raise Overloaded(BUS_SILENT) from exc
        # A slice at a time, acknowledgements awaited together: a 10,000-page batch must not
        # hold the event loop (and the questions answered on it) while it is published.
        for start in range(0, len(children), SLICE):
            await asyncio.gather(
                *(self.bus.submit(kind, c) for c in children[start : start + SLICE])
            )
        await self.bus.emit(
            TaskEvent(
                task_id=parent.task_id,
                kind=kind,
                type=EventType.STARTED,
                priority=parent.priority,
                attempt=1,
            )
        )
        return record, created

    async def records(
        self,
        *,
        kind: Kind | None,
        status: Status | None,
        limit: int,
        brands: set[str] | None = None,
        parent: str | None = None,
        before: str | None = None,
    ) -> tuple[list[TaskRecord], str | None]:
        """Newest first (ties by id), only of `brands` and children of `parent` when given,
        those whose `place` is before `before`; one pass over the bucket (records are kept
        `task_record_ttl_s`). Also the place to go on from, when more remain."""
        wanted = [
            f'"{name}":"{value}"'.encode()
            for name, value in (("kind", kind), ("status", status), ("parent_id", parent))
            if value
        ]
        found = await self.store.scan(match=lambda raw: all(w in raw for w in wanted))
        records = [
            r
            for r in found
            if (kind is None or r.kind is kind)
            and (status is None or r.status is status)
            and (parent is None or r.parent_id == parent)
            and (brands is None or r.brand in brands)
            and (before is None or place(r) < before)
        ]
        records.sort(key=place, reverse=True)
        page = records[:limit]
        return page, (place(page[-1]) if len(records) > limit else None)

    async def cancel(self, record: TaskRecord) -> list[str]:
        """Cancel a task and, for a parent, its unfinished children; returns the ids cancelled."""
        marker = f'"parent_id":"{record.task_id}"'.encode()
        children = [
            r
            for r in await self.store.scan(match=lambda raw: marker in raw)
            if r.parent_id == record.task_id and not r.status.terminal
        ]
        targets = [record, *children]
        # First the flag every worker checks, then the records (through the tracker).
        await self.bus.cancellations.cancel([r.task_id for r in targets])
        await asyncio.gather(
            *(
                self.bus.emit(
                    TaskEvent(
                        task_id=target.task_id,
                        kind=target.kind,
                        type=EventType.CANCELLED,
                        error=TaskError(type="TaskCancelled", message="cancelled by request"),
                        parent_id=target.parent_id,
                    )
                )
                for target in targets
            )
        )
        return [r.task_id for r in targets]

    async def replicas(self) -> list[dict[str, Any]]:
        """What every live replica last reported (its heartbeat), by replica id."""
        return await Replicas(self.bus.buckets).all()

    def reply_to(self, task_id: str) -> str:
        """Where rag answers query `task_id`: this gateway's reply inbox."""
        return f"{self._inbox}.{task_id}"

    async def ask(self, task: QueryTask, timeout_s: float) -> Answer:
        """Publish a query (built with `reply_to`); wait for its answer up to `timeout_s`."""
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[task.task_id] = fut
        try:
            # No record first: the gateway waits for the answer itself, and the tracker
            # writes the query's record from its outcome.
            await self.bus.submit(Kind.QUERY, task)
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError as exc:
            raise QueryTimeout(timeout_s) from exc
        finally:
            self._waiting.pop(task.task_id, None)

    async def ask_streaming(
        self, task: QueryTask, timeout_s: float
    ) -> AsyncIterator[AnswerPart | Answer]:
        """Publish a streamed query (`stream=True`); returns its replies as they come, the
        final `Answer` last.

        Publishing happens here (an `Overloaded` bus is reported before anything streams);
        the iterator raises `QueryTimeout` if the deadline passes first.
        """
        replies: asyncio.Queue[AnswerPart | Answer] = asyncio.Queue()
        self._streams[task.task_id] = replies
        try:
            await self.bus.submit(Kind.QUERY, task)
        except BaseException:
            self._streams.pop(task.task_id, None)
            raise
        return self._follow(task.task_id, replies, timeout_s)

    async def _follow(
        self, task_id: str, replies: asyncio.Queue[AnswerPart | Answer], timeout_s: float
    ) -> AsyncIterator[AnswerPart | Answer]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                try:
                    item = await asyncio.wait_for(replies.get(), max(deadline - loop.time(), 0))
                except TimeoutError as exc:
                    raise QueryTimeout(timeout_s) from exc
                yield item
                if isinstance(item, Answer):
                    return
        finally:
            self._streams.pop(task_id, None)
