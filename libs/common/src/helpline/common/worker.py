"""Running a task: the one place that decides ack, nak-with-backoff, term and dead letters.

A service's handler is a domain call that returns the task's result (a dict), or
`REPORTED_LATER` when another service will report the outcome (a scraped page is done
when the embedder has indexed it). It raises `Retryable`, `Deferred` or `Permanent`;
`run_task` turns that into the bus action and the task event, always emitting before
settling, so a crash in between repeats an event (harmless) rather than loses one.

- The attempt number is the delivery count less the deliveries that only waited on an
  open breaker (`Deferred`), kept in the `deferrals` bucket.
- A redelivered task whose record is already terminal is acknowledged and not run.
- A message that is not a valid task is dead-lettered at once (a poison message).
- While a handler runs, the message's ack deadline is pushed back (`in_progress`).
- A handler cancelled by shutdown hands its message back (nak) for another replica.

`TaskConsumer` is a kind's worker pool in one process. It pulls from the durable
consumers every replica shares (one `Puller` per priority) as many messages as it has free
slots to run, and at least one per priority, so that when every slot is busy one message
of each priority waits here and the rest stay on the bus for other replicas. Whenever one
of `concurrency` slots frees, the highest waiting priority runs, except that every
`reserved_every`-th slot goes to the lowest waiting one, so lower levels keep a small share
and never starve. While urgent work started in this process recently, batch work starts
only at the reserved rate of `urgency.Urgency`, whatever slots are free.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from nats.errors import NotJSMessageError
from opentelemetry import propagate, trace
from pydantic import ValidationError

from helpline.common import subjects
from helpline.common.errors import (
    DeadlineExpired,
    Deferred,
    HelplineError,
    Permanent,
    Retryable,
    TaskCancelled,
)
from helpline.common.messages import (
    DeadLetter,
    EventType,
    TaskError,
    TaskEvent,
    TaskMessage,
    derived_id,
    utcnow,
)
from helpline.common.observability import span
from helpline.common.pulling import Puller
from helpline.common.subjects import Kind, Priority
from helpline.common.urgency import BATCH_PRIORITIES

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from helpline.common.bus import Bus

log = logging.getLogger(__name__)


class _ReportedLater:
    def __repr__(self) -> str:
        return "REPORTED_LATER"


REPORTED_LATER: Final = _ReportedLater()
Result = dict[str, Any] | None | _ReportedLater
T = TypeVar("T", bound=TaskMessage)
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_tracer = trace.get_tracer("helpline.worker")
# A task still running after this long reports its start; a quicker one only its outcome.
START_REPORT_AFTER_S = 0.05
# Most messages of one priority asked for in one pull request.
MAX_PULL = 64


class Delivery:
    """One delivery of a JetStream message, settled at most once."""

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self.settled = False

    @property
    def body(self) -> bytes:
        return self.msg.data

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def headers(self) -> dict[str, str]:
        return self.msg.headers or {}

    @property
    def count(self) -> int:
        """How many times the bus has delivered this message (1 on first delivery)."""
        try:
            meta = self.msg.metadata
        except NotJSMessageError:
            return 1
        return int(meta.num_delivered) if meta and meta.num_delivered else 1

    async def ack(self) -> None:
        if not self.settled:
            self.settled = True
            await self.msg.ack()

    async def nack(self, delay: float | None = None) -> None:
        if not self.settled:
            self.settled = True
            await self.msg.nak(delay=delay)

    async def reject(self) -> None:
        if not self.settled:
            self.settled = True
            await self.msg.term()

    async def in_progress(self) -> None:
        if not self.settled:
            await self.msg.in_progress()


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with equal jitter (half fixed, half random), from the attempt."""

    base_s: float = 1.0
    cap_s: float = 30.0
    max_attempts: int = 4

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1`."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(attempt - 1, 0))
        delay: float = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap_s))
        return delay


class TaskContext:
    """What a handler may do besides computing its result: report progress, reach the bus."""

    def __init__(self, bus: Bus, kind: Kind, task: TaskMessage, msg: Delivery, attempt: int):
        self.started_at = utcnow()
        self.bus = bus
        self.kind = kind
        self.task = task
        self.attempt = attempt
        self.report_id, self.report_kind = task.reported_as(kind)
        self._msg = msg
        self._started: asyncio.Task[None] | None = None
        self._start_timer: asyncio.TimerHandle | None = None
        self._beat_timer: asyncio.TimerHandle | None = None
        self._beats: set[asyncio.Task[None]] = set()

    def checkpoint(self) -> None:
        """Stop here (raise `TaskCancelled`) if the task or its parent was cancelled."""
        if self.bus.is_cancelled(self.task.task_id, self.task.parent_id, self.report_id):
            raise TaskCancelled("cancelled")

    async def keep_alive(self) -> None:
        """Tell the bus this long task is still running (resets ack_wait)."""
        await self._msg.in_progress()

    def keep_alive_every(self, every_s: float) -> None:
        """While the handler runs, tell the bus every `every_s` (a timer, not a task: most
        tasks end long before the first beat)."""
        self._beat_timer = asyncio.get_running_loop().call_later(every_s, self._beat, every_s)

    def _beat(self, every_s: float) -> None:
        beat = asyncio.create_task(self.keep_alive())
        self._beats.add(beat)
        beat.add_done_callback(self._beats.discard)
        self.keep_alive_every(every_s)

    def stop_keeping_alive(self) -> None:
        if self._beat_timer is not None:
            self._beat_timer.cancel()
            self._beat_timer = None

    def report_started(self, after_s: float = 0.0) -> None:
        """Publish the STARTED event once the handler has run `after_s`, while it runs (off
        the critical path). A task done sooner reports only its outcome, which carries the
        start time; the next event waits for a STARTED in flight, so events keep their order."""
        self._start_timer = asyncio.get_running_loop().call_later(after_s, self._start_now)

    def _start_now(self) -> None:
        self._start_timer = None
        self._started = asyncio.create_task(self._emit(EventType.STARTED, {}))

    def report_started_now(self) -> None:
        """Publish a STARTED event still waiting for its time at once."""
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_now()

    async def settle_started(self) -> None:
        """Wait for the STARTED event; one the bus refused is only logged (the record then
        goes from queued straight to the outcome, which carries everything else)."""
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None
        started, self._started = self._started, None
        if started is None:
            return
        try:
            await started
        except Exception as exc:
            log.warning("task %s: its start was not reported: %r", self.task.task_id, exc)

    async def event(self, type_: EventType, **fields: Any) -> None:
        await self.settle_started()
        await self._emit(type_, fields)

    async def _emit(self, type_: EventType, fields: dict[str, Any]) -> None:
        event = TaskEvent(
            task_id=self.report_id,
            kind=self.report_kind,
            type=type_,
            attempt=self.attempt,
            priority=self.task.priority,
            parent_id=self.task.parent_id,
            started_at=self.started_at,
            created_at=self.task.created_at,
            **fields,
        )
        if self.task.notify and type_.outcome:
            # Sent along with the event (the caller waiting on it need not wait for the
            # event to be stored too); best effort: the record is what lasts.
            with contextlib.suppress(Exception):
                await self.bus.nc.publish(self.task.notify, event.model_dump_json().encode())
        await self.bus.emit(event)


def error_of(exc: BaseException) -> TaskError:
    """What a client is shown of a failure: our messages verbatim, others by type only."""
    if isinstance(exc, HelplineError):
        return TaskError(type=type(exc).__name__, message=exc.message)
    return TaskError(type="InternalError", message=f"unexpected {type(exc).__name__}")


async def run_task(
    ctx: TaskContext,
    msg: Delivery,
    handler: Callable[[TaskContext], Awaitable[Result]],
    policy: RetryPolicy,
    *,
    report_start: bool = True,
) -> None:
    """Run one delivery of a task and settle its message.

    Without `report_start` only the outcome is reported (its event carries the start
    time): for short tasks whose caller waits for the result itself, such as a query.
    """
    if ctx.task.expired():
        await ctx.event(
            EventType.EXPIRED,
            error=error_of(DeadlineExpired("deadline passed before the task ran")),
        )
        await msg.reject()
        return
    if report_start:
        ctx.report_started(START_REPORT_AFTER_S)
    ctx.keep_alive_every(ctx.bus.layout.ack_wait_s / 3)
    try:
        result = await handler(ctx)
    except asyncio.CancelledError:
        # Shutting down: hand the message back now rather than after ack_wait.
        with contextlib.suppress(Exception):
            await asyncio.shield(msg.nack())
        raise
    except Deferred as exc:
        await _defer(ctx, msg, exc, policy)
    except TaskCancelled as exc:
        await ctx.event(EventType.CANCELLED, error=error_of(exc))
        await msg.ack()
    except Permanent as exc:
        log.info("task %s failed: %s", ctx.task.task_id, exc.message)
        type_ = EventType.EXPIRED if isinstance(exc, DeadlineExpired) else EventType.FAILED
        await ctx.event(type_, error=error_of(exc))
        await msg.reject()
    except Exception as exc:
        await _retry_or_dead_letter(ctx, msg, exc, policy)
    else:
        if isinstance(result, _ReportedLater):
            # The task goes on elsewhere (a page in the embedder): it is running, and the
            # start says which attempt it is.
            ctx.report_started_now()
        else:
            await ctx.event(EventType.SUCCEEDED, result=result or {})
        await msg.ack()
    finally:
        ctx.stop_keeping_alive()
        await ctx.settle_started()


async def _defer(ctx: TaskContext, msg: Delivery, exc: Deferred, policy: RetryPolicy) -> None:
    delay = exc.retry_after if exc.retry_after is not None else policy.base_s
    await ctx.bus.add_deferral(ctx.task.task_id)
    await ctx.event(
        EventType.RETRYING,
        error=error_of(exc),
        result={"retry_in_s": round(delay, 3), "deferred": True},
    )
    await msg.nack(delay=delay)


async def _retry_or_dead_letter(
    ctx: TaskContext, msg: Delivery, exc: Exception, policy: RetryPolicy
) -> None:
    err = error_of(exc)
    if not isinstance(exc, Retryable):
        log.exception("task %s raised unexpectedly", ctx.task.task_id, exc_info=exc)
    if ctx.attempt >= policy.max_attempts:
        gave_up = TaskError(
            type=err.type, message=f"gave up after {ctx.attempt} attempts: {err.message}"
        )
        await dead_letter(
            ctx.bus, ctx.kind, ctx.task.task_id, ctx.task.priority, msg, gave_up, ctx.attempt
        )
        await ctx.event(EventType.FAILED, error=gave_up)
        await msg.reject()
        return
    retry_after = exc.retry_after if isinstance(exc, Retryable) else None
    delay = policy.delay(ctx.attempt, retry_after)
    await ctx.event(EventType.RETRYING, error=err, result={"retry_in_s": round(delay, 3)})
    await msg.nack(delay=delay)


async def dead_letter(
    bus: Bus,
    kind: Kind,
    task_id: str,
    priority: Priority | None,
    msg: Delivery,
    error: TaskError,
    attempts: int,
) -> None:
    """Keep the message, with why and after how many attempts, in the dead-letter stream."""
    letter = DeadLetter(
        task_id=task_id,
        kind=kind,
        priority=priority,
        attempts=attempts,
        error=error,
        body=msg.body.decode("utf-8", errors="replace"),
    )
    subject_id = task_id if _SUBJECT_TOKEN.match(task_id) else derived_id("poison", task_id)
    await bus.publish(
        subjects.dlq(kind, subject_id, bus.layout.prefix),
        letter.model_dump_json().encode(),
        stream=subjects.dlq_stream(bus.layout.prefix),
        msg_id=f"{subject_id}:dlq:{attempts}",
    )


async def _reject_poison(bus: Bus, kind: Kind, msg: Delivery, exc: ValidationError) -> None:
    """A message that is not a valid task: dead-letter it at once, fail its task if it names one."""
    task_id = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        task_id = str(json.loads(msg.body).get("task_id") or "")
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
    )
    error = TaskError(type="InvalidMessage", message=f"not a valid {kind} task: {problems}")
    log.warning("poison message on %s: %s", kind, error.message)
    await dead_letter(bus, kind, task_id or "unknown", None, msg, error, msg.count)
    if task_id and _SUBJECT_TOKEN.match(task_id):
        await bus.emit(TaskEvent(task_id=task_id, kind=kind, type=EventType.FAILED, error=error))
    await msg.reject()


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
                await _reject_poison(self.bus, self.kind, delivery, exc)
                return
            report_id, _ = task.reported_as(self.kind)
            if self.bus.is_cancelled(task.task_id, task.parent_id, report_id):
                # The gateway records the cancellation of the tasks it knew of; a child whose
                # record appeared after that (a page claimed while the crawl was being
                # cancelled) is recorded here. A repeat changes nothing.
                ctx = TaskContext(self.bus, self.kind, task, delivery, delivery.count)
                await ctx.event(
                    EventType.CANCELLED, error=error_of(TaskCancelled("cancelled by request"))
                )
                await delivery.ack()
                return
            attempt = delivery.count
            if attempt > 1:
                if await self.bus.task_finished(report_id):
                    await delivery.ack()
                    return
                attempt = max(1, attempt - await self.bus.deferrals(task.task_id))
            ctx = TaskContext(self.bus, self.kind, task, delivery, attempt)
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
