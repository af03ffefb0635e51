"""The tracker: folds task events into task records with compare-and-swap.

One durable consumer shared by every gateway replica, pulled in batches of up to
`HELPLINE_TRACKER_BATCH` events (an idle tracker gets each event within a round trip; a busy one takes
whatever has queued since its last batch). A batch's events are grouped by task and each
task's are folded into one compare-and-swap (`records.apply_event`: states only move
forward, a terminal state is final, a duplicate changes nothing), all tasks in flight at
once.

Parents (crawls, batches). A child that reaches a terminal state writes its outcome once
to the parent's ledger in the `crawls` bucket (`crawlstate.mark_finished`); the write that
created it counts the child, and a batch adds all the children it counted to each parent
in one compare-and-swap. The parent finishes when every page it claimed has finished. If
that update fails after the ledger was written (a timeout, a crash in between), the
parent is recounted from the ledger (`recount`) instead of being left short.

Webhooks. Every terminal state the tracker applies, a parent's included, is announced here
and nowhere else (`webhooks.Announcer.task_finished`), after records and parents are
written and before the events are acknowledged; a failed announcement hands its events
back, and an outcome applied again announces again under the same derived delivery ids,
which the task store and the bus turn into nothing. A parent finished by a recount has no
event to hand back: it is tried three times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from helpline.common import subjects
from helpline.common.bus import Bus
from helpline.common.crawlstate import CrawlLedger, Tally
from helpline.common.messages import EventType, TaskEvent, utcnow
from helpline.common.pulling import Puller
from helpline.common.records import Progress, Status, TaskRecord, apply_event
from helpline.common.taskstore import TaskStore
from helpline.common.webhooks import Announcer

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = logging.getLogger(__name__)

# Most events taken in one batch.
BATCH = 256
#: Parents' brands remembered (forgotten all at once past this).
BRANDS_KEPT = 10_000


def _record_for(event: TaskEvent, brand: str | None = None) -> TaskRecord:
    """A record for a task first seen through its events (a crawl's pages)."""
    return TaskRecord(
        task_id=event.task_id,
        kind=event.kind,
        brand=brand,
        priority=event.priority or subjects.Priority.NORMAL,
        parent_id=event.parent_id,
        created_at=event.created_at or event.at,
        trace_id=event.trace_id,
    )


def fold(
    record: TaskRecord | None, events: list[TaskEvent], brand: str | None = None
) -> TaskRecord | None:
    """The record after all of a task's events, or None when they change nothing; a new
    record gets `brand` (its parent's)."""
    current = record if record is not None else _record_for(events[0], brand)
    changed = record is None
    for event in events:
        updated = apply_event(current, event)
        if updated is not None:
            current, changed = updated, True
    return current if changed else None


@dataclass
class _ParentDelta:
    """What one batch adds to a parent."""

    tally: Tally = field(default_factory=Tally)
    finished_at: Any = None
    refresh_total: bool = False

    def add(self, child: TaskRecord) -> None:
        ok = child.status is Status.SUCCEEDED
        chunks = int((child.result or {}).get("chunks_indexed", 0)) if ok else 0
        by_status = dict(self.tally.by_status)
        by_status[child.status.value] = by_status.get(child.status.value, 0) + 1
        self.tally = Tally(
            done=self.tally.done + 1,
            ok=self.tally.ok + ok,
            failed=self.tally.failed + (not ok),
            chunks=self.tally.chunks + chunks,
            by_status=by_status,
        )
        if child.finished_at and (self.finished_at is None or child.finished_at > self.finished_at):
            self.finished_at = child.finished_at


def _with_progress(
    parent: TaskRecord, counted: Tally, total: int, finished_at: Any, *, exact: bool
) -> TaskRecord | None:
    """The parent with `counted` children added, or None if that changes nothing.

    `exact`: `counted` is every finished child (from the ledger), and a parent whose
    claimed pages have all finished succeeds; an added count never finishes a parent, so
    that a count raised twice (a retried update) cannot end a crawl early.
    """
    progress = parent.progress or Progress()
    result: dict[str, Any] = dict(parent.result or {})
    if exact:
        done, ok, failed, chunks = counted.done, counted.ok, counted.failed, counted.chunks
        by_status = dict(counted.by_status)
    else:
        done = progress.done + counted.done
        ok = int(result.get("pages_ok", 0)) + counted.ok
        failed = int(result.get("pages_failed", 0)) + counted.failed
        chunks = int(result.get("chunks_indexed", 0)) + counted.chunks
        by_status = dict(result.get("children") or {})
        for status, n in counted.by_status.items():
            by_status[status] = int(by_status.get(status, 0)) + n
    total = max(progress.total, total, done)
    finished = exact and 0 < total <= done
    if done == progress.done and total == progress.total and not finished:
        return None
    update: dict[str, Any] = {"progress": Progress(done=done, total=total)}
    if done or "pages_ok" in result:
        result.update(pages_ok=ok, pages_failed=failed, chunks_indexed=chunks)
        result["children"] = _children(by_status, total - done)
        update["result"] = result
    if finished:
        update["status"] = Status.SUCCEEDED
        update["finished_at"] = finished_at or parent.finished_at or utcnow()
    return parent.model_copy(update=update)


def _children(by_status: dict[str, Any], unfinished: int) -> dict[str, int]:
    """A parent's children by status: each terminal one, and those not finished yet."""
    counts = {s.value: int(by_status.get(s.value, 0)) for s in Status if s.terminal}
    return {**counts, "unfinished": max(unfinished, 0)}


def _complete(record: TaskRecord) -> bool:
    return record.progress is not None and 0 < record.progress.total <= record.progress.done


@dataclass
class _Applied:
    """What applying one task's events means for its parent."""

    counted: TaskRecord | None = None
    created_under: str | None = None
    #: The terminal record an outcome event reached (to announce to webhooks).
    finished: TaskRecord | None = None


class Tracker:
    def __init__(self, bus: Bus, store: TaskStore, *, batch: int = BATCH) -> None:
        self.bus = bus
        self.store = store
        self.crawls = CrawlLedger(bus.buckets)
        self.batch = batch
        self._queue: list[Msg] = []
        self._arrived = asyncio.Event()
        self._puller: Puller | None = None
        self._loop: asyncio.Task[None] | None = None
        self._brands: dict[str, str | None] = {}
        #: Announces terminal states to webhooks (`webhooks.Announcer`); None: nobody listens.
        self.announcer: Announcer | None = None

    async def start(self) -> None:
        """Bind the shared durable consumer and start applying events."""
        lay = self.bus.layout
        self._puller = Puller(
            self.bus.nc,
            subjects.events_stream(lay.prefix),
            subjects.TRACKER_CONSUMER,
            self._arrive,
            on_idle=self._refill,
        )
        await self._puller.start()
        self._refill()
        self._loop = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        if self._puller is not None:
            await self._puller.stop()
            self._puller = None
        queued, self._queue = self._queue, []
        for msg in queued:  # taken but not applied: back to the bus at once
            with contextlib.suppress(Exception):
                await msg.nak()

    def _arrive(self, msg: Msg) -> None:
        self._queue.append(msg)
        self._arrived.set()

    def _refill(self) -> None:
        if self._puller is not None:
            self._puller.want(self.batch - len(self._queue))

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            batch, self._queue = self._queue[: self.batch], self._queue[self.batch :]
            self._refill()
            try:
                await self.apply_batch(batch)
            except Exception:
                log.exception("applying %d task events", len(batch))
                for msg in batch:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)
            if self._queue:
                self._arrived.set()

    async def apply_batch(self, msgs: list[Msg]) -> None:
        """Apply a batch of events and settle their messages (nak what could not be applied)."""
        by_task: dict[str, list[tuple[TaskEvent, Msg]]] = defaultdict(list)
        for msg in msgs:
            try:
                event = TaskEvent.model_validate_json(msg.data)
            except ValidationError as exc:
                log.warning("dropping an unreadable task event: %s", exc.errors()[:1])
                await msg.ack()
                continue
            by_task[event.task_id].append((event, msg))
        outcomes = await asyncio.gather(
            *(self._apply_task([e for e, _ in group]) for group in by_task.values()),
            return_exceptions=True,
        )
        parents: dict[str, _ParentDelta] = defaultdict(_ParentDelta)
        recount: set[str] = set()
        settle: list[Any] = []
        applied: list[tuple[list[tuple[TaskEvent, Msg]], _Applied]] = []
        for group, outcome in zip(by_task.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("task %s: events not applied: %r", group[0][0].task_id, outcome)
                settle.extend(m.nak(delay=1.0) for _, m in group)
                continue
            applied.append((group, outcome))
            if outcome.counted is not None and outcome.counted.parent_id:
                parents[outcome.counted.parent_id].add(outcome.counted)
            if outcome.created_under:
                parents[outcome.created_under].refresh_total = True
            if any(e.type is EventType.RECOUNT for e, _ in group):
                recount.add(group[0][0].task_id)
        if parents:
            await asyncio.gather(*(self._update_parent(p, d) for p, d in parents.items()))
        if recount:
            await asyncio.gather(*(self.recount(p) for p in recount), return_exceptions=True)
        # Announced last, so a webhook backlog never holds up records and parents; a failed
        # announcement hands its events back, to be applied (a no-op) and announced again.
        unannounced = await self._announce([o.finished for _, o in applied])
        for group, outcome in applied:
            failed = outcome.finished is not None and outcome.finished.task_id in unannounced
            settle.extend(m.nak(delay=1.0) if failed else m.ack() for _, m in group)
        await asyncio.gather(*settle, return_exceptions=True)

    async def _announce(self, records: list[TaskRecord | None]) -> set[str]:
        """Announce finished tasks to webhooks; the ids of those that could not be."""
        finished = [r for r in records if r is not None]
        if self.announcer is None or not finished:
            return set()
        outcomes = await asyncio.gather(
            *(self.announcer.task_finished(r) for r in finished), return_exceptions=True
        )
        failed = set()
        for record, outcome in zip(finished, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("task %s: not announced to webhooks: %r", record.task_id, outcome)
                failed.add(record.task_id)
        return failed

    async def _apply_task(self, events: list[TaskEvent]) -> _Applied:
        """Fold a task's events into its record; says whether this call counted the task as
        a finished child of its parent, and which parent a new child was created under."""
        task_id = events[0].task_id
        brand = await self._parent_brand(events[0].parent_id)
        updated = await self.store.change(task_id, lambda record: fold(record, events, brand))
        applied = _Applied()
        if updated is not None:
            applied.created_under = next(
                (e.parent_id for e in events if e.type is EventType.CREATED and e.parent_id),
                None,
            )
        if not any(e.type.outcome for e in events):
            return applied
        record = updated or await self.store.get(task_id)
        if record is None or not record.status.terminal:
            return applied
        # Also for an outcome seen again (its first announcement may have failed): the
        # deliveries' ids are derived from the task and its state, so they go out once.
        applied.finished = record
        if not record.parent_id:
            return applied
        ok = record.status is Status.SUCCEEDED
        chunks = int((record.result or {}).get("chunks_indexed", 0)) if ok else 0
        if await self.crawls.mark_finished(
            record.parent_id, task_id, ok=ok, chunks=chunks, status=record.status.value
        ):
            applied.counted = record
        return applied

    async def _parent_brand(self, parent_id: str | None) -> str | None:
        """A parent's brand, which its children's records carry (it never changes)."""
        if parent_id is None:
            return None
        if parent_id not in self._brands:
            if len(self._brands) >= BRANDS_KEPT:
                self._brands.clear()
            parent = await self.store.get(parent_id)
            if parent is None:
                return None  # not stored yet: asked again for the next event
            self._brands[parent_id] = parent.brand
        return self._brands[parent_id]

    async def _update_parent(self, parent_id: str, delta: _ParentDelta) -> None:
        for attempt in range(3):
            try:
                await self._add_to_parent(parent_id, delta)
                return
            except Exception as exc:
                log.warning("parent %s: progress not updated (%r)", parent_id, exc)
                await asyncio.sleep(0.2 * (attempt + 1))
        # Its children's outcomes are in the ledger: count them from there.
        with contextlib.suppress(Exception):
            await self.recount(parent_id)

    async def _add_to_parent(self, parent_id: str, delta: _ParentDelta) -> None:
        claimed = await self.crawls.pages_claimed(parent_id)
        updated = await self.store.change(
            parent_id,
            lambda parent: (
                None
                if parent is None or parent.status.terminal
                else _with_progress(parent, delta.tally, claimed, delta.finished_at, exact=False)
            ),
        )
        if updated is not None and _complete(updated):
            # Every claimed page counted: confirm against the ledger, then finish.
            await self.recount(parent_id, finished_at=delta.finished_at)

    async def recount(self, parent_id: str, finished_at: Any = None) -> TaskRecord | None:
        """Set a parent's progress from its ledger, finishing it when every claimed page has."""
        counted = await self.crawls.tally(parent_id)
        claimed = await self.crawls.pages_claimed(parent_id)
        updated = await self.store.change(
            parent_id,
            lambda parent: (
                None
                if parent is None or parent.status.terminal
                else _with_progress(parent, counted, claimed, finished_at, exact=True)
            ),
        )
        if updated is not None and updated.status.terminal:
            # Finished here, not by an event: no event to hand back, so tried a few times.
            for attempt in range(3):
                if not await self._announce([updated]):
                    break
                await asyncio.sleep(0.2 * (attempt + 1))
            await self.crawls.mark_closed(parent_id)
        return updated
