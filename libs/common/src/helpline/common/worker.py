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
- While a handler runs, the message's ack deadline is pushed back (`in_progress`), for at
  most its kind's longest run time (`RetryPolicy.max_run_s`): then the handler is cancelled
  (at its next await) and the task retried, or dead-lettered with "ran longer than N s".
- A handler cancelled by shutdown hands its message back (nak) for another replica.

Which task runs when is `taskpool.TaskConsumer`'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from nats.errors import NotJSMessageError
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pydantic import ValidationError

from helpline.common import metrics, subjects
from helpline.common.errors import (
    DeadlineExpired,
    Deferred,
    HelplineError,
    Permanent,
    RanTooLong,
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
from helpline.common.observability import current_trace_id
from helpline.common.retrypolicy import RetryPolicy
from helpline.common.subjects import Kind, Priority

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from helpline.common.bus import Bus

log = logging.getLogger(__name__)


class _ReportedLater:
    def __repr__(self) -> str:
        return "REPORTED_LATER"


REPORTED_LATER: Final = _ReportedLater()
Result = dict[str, Any] | None | _ReportedLater
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
# A task still running after this long reports its start; a quicker one only its outcome.
START_REPORT_AFTER_S = 0.05


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

    def waited_s(self) -> float | None:
        """Seconds since the message was stored on the bus (None outside JetStream)."""
        try:
            meta = self.msg.metadata
        except NotJSMessageError:
            return None
        if meta is None or meta.timestamp is None:
            return None
        return max(0.0, (utcnow() - meta.timestamp).total_seconds())

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

    def count(self, outcome: str) -> None:
        """Count this delivery's outcome (`metrics.TASKS`) and put it on the task's span."""
        if metrics.enabled():
            metrics.TASKS.labels(self.kind, self.task.priority, outcome).inc()
        trace.get_current_span().set_attribute("helpline.task.outcome", outcome)

    def ran(self, since: float) -> None:
        """Record how long the handler ran (`metrics.TASK_RUN`)."""
        if metrics.enabled():
            elapsed = time.perf_counter() - since
            metrics.TASK_RUN.labels(self.kind, self.task.priority).observe(elapsed)

    def checkpoint(self) -> None:
        """Stop here (raise `TaskCancelled`) if the task or its parent was cancelled."""
        if self.bus.cancellations.any(self.task.task_id, self.task.parent_id, self.report_id):
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
            trace_id=current_trace_id(),
            replica=self.bus.replica_id,
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
        ctx.count("expired")
        return
    waited = msg.waited_s() if metrics.enabled() else None
    if waited is not None:
        metrics.TASK_WAIT.labels(ctx.kind, ctx.task.priority).observe(waited)
    if report_start:
        ctx.report_started(START_REPORT_AFTER_S)
    ctx.keep_alive_every(ctx.bus.layout.ack_wait_s / 3)
    started = time.perf_counter()
    try:
        result = await _bounded(handler, ctx, policy.max_run(ctx.kind))
    except asyncio.CancelledError:
        # Shutting down: hand the message back now rather than after ack_wait.
        with contextlib.suppress(Exception):
            await asyncio.shield(msg.nack())
        raise
    except Deferred as exc:
        ctx.ran(started)
        await _defer(ctx, msg, exc, policy)
        ctx.count("deferred")
    except TaskCancelled as exc:
        ctx.ran(started)
        await ctx.event(EventType.CANCELLED, error=error_of(exc))
        await msg.ack()
        ctx.count("cancelled")
    except Permanent as exc:
        ctx.ran(started)
        _failed(exc)
        log.info("task %s failed: %s", ctx.task.task_id, exc.message)
        expired = isinstance(exc, DeadlineExpired)
        await ctx.event(EventType.EXPIRED if expired else EventType.FAILED, error=error_of(exc))
        await msg.reject()
        ctx.count("expired" if expired else "failed")
    except Exception as exc:
        ctx.ran(started)
        _failed(exc)
        ctx.count(await _retry_or_dead_letter(ctx, msg, exc, policy))
    else:
        ctx.ran(started)
        if isinstance(result, _ReportedLater):
            # The task goes on elsewhere (a page in the embedder): it is running, and the
            # start says which attempt it is.
            ctx.report_started_now()
        else:
            await ctx.event(EventType.SUCCEEDED, result=result or {})
        await msg.ack()
        ctx.count("reported_later" if isinstance(result, _ReportedLater) else "succeeded")
    finally:
        ctx.stop_keeping_alive()
        await ctx.settle_started()


async def _bounded(
    handler: Callable[[TaskContext], Awaitable[Result]], ctx: TaskContext, limit_s: float
) -> Result:
    """The handler's result, or `RanTooLong` once it has run `limit_s` (it is cancelled: a
    handler stuck in a thread's call is let go, the thread finishes on its own)."""
    bound = asyncio.timeout(limit_s)
    try:
        async with bound:
            return await handler(ctx)
    except TimeoutError:
        if bound.expired():
            raise RanTooLong(f"ran longer than {limit_s:g} s") from None
        raise


def _failed(exc: Exception) -> None:
    """Mark the task's span failed, by the error's type (its message may name a URL)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attribute("error.type", type(exc).__name__)
        current.set_status(Status(StatusCode.ERROR, type(exc).__name__))


async def _defer(ctx: TaskContext, msg: Delivery, exc: Deferred, policy: RetryPolicy) -> None:
    delay = exc.retry_after if exc.retry_after is not None else policy.base_s
    await ctx.bus.deferrals.add(ctx.task.task_id)
    await ctx.event(
        EventType.RETRYING,
        error=error_of(exc),
        result={"retry_in_s": round(delay, 3), "deferred": True},
    )
    await msg.nack(delay=delay)


async def _retry_or_dead_letter(
    ctx: TaskContext, msg: Delivery, exc: Exception, policy: RetryPolicy
) -> str:
    """Retry later, or dead-letter the last attempt; which of the two ("retried",
    "dead_lettered")."""
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
        return "dead_lettered"
    retry_after = exc.retry_after if isinstance(exc, Retryable) else None
    delay = policy.delay(ctx.attempt, retry_after)
    await ctx.event(EventType.RETRYING, error=err, result={"retry_in_s": round(delay, 3)})
    await msg.nack(delay=delay)
    return "retried"


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
        trace_id=current_trace_id(),
    )
    subject_id = task_id if _SUBJECT_TOKEN.match(task_id) else derived_id("poison", task_id)
    await bus.publish(
        subjects.dlq(kind, subject_id, bus.layout.prefix),
        letter.model_dump_json().encode(),
        stream=subjects.dlq_stream(bus.layout.prefix),
        msg_id=f"{subject_id}:dlq:{attempts}",
    )


async def reject_poison(bus: Bus, kind: Kind, msg: Delivery, exc: ValidationError) -> None:
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
