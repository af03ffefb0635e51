"""A kind's worker pool in one process: which waiting task runs next.

`TaskConsumer` pulls from the durable consumers every replica shares (one `Puller` per
priority) as many messages as it has free slots to run, and at least one per priority, so
that when every slot is busy one message of each priority waits here and the rest stay on
the bus for other replicas. Whenever one of `concurrency` slots frees, the highest waiting
priority runs, except that every `reserved_every`-th slot goes to the lowest waiting one,
so lower levels keep a small share and never starve. While urgent work started in this
process recently, batch work starts only at the reserved rate of `urgency.Urgency`,
whatever slots are free. Running and settling one task is `worker.run_task`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import propagate, trace
from pydantic import ValidationError

from helpline.common import metrics, subjects
from helpline.common.errors import TaskCancelled
from helpline.common.messages import EventType, TaskMessage
from helpline.common.observability import span
from helpline.common.pulling import Puller
from helpline.common.retrypolicy import RetryPolicy
from helpline.common.subjects import Kind, Priority
from helpline.common.taskstore import record_finished
from helpline.common.urgency import BATCH_PRIORITIES
from helpline.common.worker import Delivery, Result, TaskContext, error_of, reject_poison, run_task

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from helpline.common.bus import Bus

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("helpline.worker")
T = TypeVar("T", bound=TaskMessage)
# Most messages of one priority asked for in one pull request.
MAX_PULL = 64


class TaskConsumer:
    """One kind's worker pool in this process: priorities served highest first, with a share."""

    def __init__(
        self,
        bus: Bus,
        kind: Kind,
        model: type[T],
        handler: Callable[[T, TaskContext], Awaitable[Result]],
        *,
        concurrency: int,
        policy: RetryPolicy,
        bulk_concurrency: int | None = None,
        reserved_every: int = 10,
        priorities: tuple[Priority, ...] = subjects.PRIORITIES_HIGH_FIRST,
        report_start: bool = True,
    ) -> None:
        self.report_start = report_start
        self.bus = bus
        self.kind = kind
        self.model = model
        self.handler = handler
        self.concurrency = max(1, concurrency)
        # Batch work (low and bulk) may hold only this many of the slots at once.
        self.bulk_concurrency = min(
            self.concurrency, max(1, bulk_concurrency or bus.layout.bulk_concurrency)
        )
        self.bulk_busy = 0
        self.policy = policy
        self.reserved_every = max(2, reserved_every)
        self.priorities = priorities
        self.busy = 0
        self.started_by_priority: dict[Priority, int] = dict.fromkeys(priorities, 0)
        self._waiting: dict[Priority, deque[Msg]] = {p: deque() for p in priorities}
        self._pullers: dict[Priority, Puller] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._picks = 0
        self._stopping = False
        self._batch_started_at = float("-inf")
        self._batch_wake: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Bind the shared durable consumers and start pulling."""
        lay = self.bus.layout
        for priority in self.priorities:
            puller = Puller(
                self.bus.nc,
                lay.task_stream(self.kind),
                subjects.consumer(self.kind, priority),
                functools.partial(self._arrive, priority),
                on_idle=functools.partial(self._refill, priority),
            )
            await puller.start()
            self._pullers[priority] = puller
            self._refill(priority)
        self._loops.append(asyncio.create_task(self._keep_waiting_alive()))

    def _arrive(self, priority: Priority, msg: Msg) -> None:
        self._waiting[priority].append(msg)
        self._start_waiting()

    def _refill(self, priority: Priority) -> None:
        """Ask for as many of this priority as there are free slots to run them (at least
        one, so that the highest waiting priority is known when a slot frees)."""
        if self._stopping:
            return
        waiting = sum(len(w) for w in self._waiting.values())
        room = self.concurrency - self.busy - waiting
        if priority in BATCH_PRIORITIES:
            room = min(room, self.bulk_concurrency - self.bulk_busy)
        want = max(1, min(room, MAX_PULL)) - len(self._waiting[priority])
        self._pullers[priority].want(want)

    def _pick(self) -> Priority | None:
        bulk_held = self.bulk_busy >= self.bulk_concurrency or self._batch_yields()
        ready = [
            p
            for p in self.priorities
            if self._waiting[p] and not (bulk_held and p in BATCH_PRIORITIES)
        ]
        if not ready:
            return None
        self._picks += 1
        return ready[-1] if self._picks % self.reserved_every == 0 else ready[0]

    def _batch_yields(self) -> bool:
        """Whether batch work waits for urgent work started in this process (`Urgency`);
        if so, the pool looks again when it may start the next."""
        wait = self.bus.urgency.batch_wait(self._batch_started_at)
        if wait <= 0:
            return False
        if self._batch_wake is None and any(self._waiting[p] for p in BATCH_PRIORITIES):
            self._batch_wake = asyncio.get_running_loop().call_later(wait, self._batch_woken)
        return True

    def _batch_woken(self) -> None:
        self._batch_wake = None
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Start waiting messages while slots are free, the highest priority first (with the
        reserved share). Called as a message arrives and as a task ends, so a task starts
        in that turn of the event loop, not in a dispatcher's later one: on a loop busy with
        bulk work every turn waits behind everything else that is ready."""
        while not self._stopping and self.busy < self.concurrency:
            priority = self._pick()
            if priority is None:
                return
            msg = self._waiting[priority].popleft()
            self.started_by_priority[priority] += 1
            self.bus.urgency.started(priority)
            batch = priority in BATCH_PRIORITIES
            if batch:
                self._batch_started_at = time.monotonic()
            self.busy += 1
            self.bulk_busy += batch
            task = asyncio.create_task(self._run(Delivery(msg), batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            self._refill(priority)

    async def _keep_waiting_alive(self) -> None:
        """Messages pulled but not started yet (every slot busy) are not redelivered."""
        while True:
            await asyncio.sleep(self.bus.layout.ack_wait_s / 3)
            for waiting in self._waiting.values():
                for msg in list(waiting):
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    async def _run(self, delivery: Delivery, batch: bool) -> None:
        try:
            await self.handle(delivery)
        except Exception:
            log.exception("settling a %s task failed; the bus will redeliver it", self.kind)
        finally:
            self.busy -= 1
            self.bulk_busy -= batch
            for priority in self.priorities:
                if priority in self._pullers and not self._pullers[priority].open:
                    self._refill(priority)
            self._start_waiting()

    async def handle(self, delivery: Delivery) -> None:
        """Decode, skip what is finished or poison, run and settle one delivery."""
        context = propagate.extract(delivery.headers)
        with span(
            _tracer, f"{delivery.subject} process", context=context, kind=trace.SpanKind.CONSUMER
        ):
            try:
                task = self.model.model_validate_json(delivery.body)
            except ValidationError as exc:
                await reject_poison(self.bus, self.kind, delivery, exc)
                metrics.POISON.labels(self.kind).inc()
                return
            report_id, _ = task.reported_as(self.kind)
            _describe(trace.get_current_span(), delivery.subject, self.kind, task, report_id)
            if self.bus.cancellations.any(task.task_id, task.parent_id, report_id):
                # The gateway records the cancellation of the tasks it knew of; a child whose
                # record appeared after that (a page claimed while the crawl was being
                # cancelled) is recorded here. A repeat changes nothing.
                ctx = TaskContext(self.bus, self.kind, task, delivery, delivery.count)
                await ctx.event(
                    EventType.CANCELLED, error=error_of(TaskCancelled("cancelled by request"))
                )
                await delivery.ack()
                ctx.count("cancelled")
                return
            attempt = delivery.count
            if attempt > 1:
                if await record_finished(self.bus.buckets, report_id):
                    await delivery.ack()
                    metrics.TASKS.labels(self.kind, task.priority, "skipped").inc()
                    return
                attempt = max(1, attempt - await self.bus.deferrals.count(task.task_id))
            ctx = TaskContext(self.bus, self.kind, task, delivery, attempt)
            trace.get_current_span().set_attribute("helpline.task.attempt", attempt)
            await run_task(
                ctx,
                delivery,
                lambda c: self.handler(task, c),
                self.policy,
                report_start=self.report_start,
            )

    async def stop(self, grace_s: float) -> None:
        """Stop taking work; give running tasks `grace_s` to finish, then hand them back."""
        self._stopping = True
        if self._batch_wake is not None:
            self._batch_wake.cancel()
            self._batch_wake = None
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        await asyncio.gather(*(p.stop() for p in self._pullers.values()))
        self._pullers.clear()
        for waiting in self._waiting.values():  # pulled but never started: back at once
            while waiting:
                with contextlib.suppress(Exception):
                    await waiting.popleft().nak()
        if self._running:
            _done, pending = await asyncio.wait(set(self._running), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def report(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "concurrency": self.concurrency,
            "bulk_concurrency": self.bulk_concurrency,
            "busy": self.busy,
            "started": {str(p): n for p, n in self.started_by_priority.items()},
        }


def _describe(
    current: trace.Span, subject: str, kind: Kind, task: TaskMessage, report_id: str
) -> None:
    """The task on its process span: which one, so its trace can be found by task id."""
    if not current.is_recording():
        return
    current.set_attributes(
        {
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.operation.type": "process",
            "helpline.task.id": task.task_id,
            "helpline.task.kind": str(kind),
            "helpline.task.priority": str(task.priority),
        }
    )
    if task.parent_id is not None:
        current.set_attribute("helpline.task.parent_id", task.parent_id)
    if report_id != task.task_id:
        # An embed task reports as its page's scrape task.
        current.set_attribute("helpline.task.reported_as", report_id)
