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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsRouter, PullSub
from faststream.nats.annotations import NatsMessage
from nats.errors import NotJSMessageError
from pydantic import ValidationError

from helpline.common import subjects
from helpline.common.errors import (
    DeadlineExpired,
    Deferred,
    HelplineError,
    Permanent,
    Retryable,
)
from helpline.common.messages import (
    DeadLetter,
    EventType,
    TaskError,
    TaskEvent,
    TaskMessage,
    derived_id,
)
from helpline.common.subjects import Kind, Priority

if TYPE_CHECKING:
    from helpline.common.bus import Bus

log = logging.getLogger(__name__)


class _ReportedLater:
    def __repr__(self) -> str:
        return "REPORTED_LATER"


REPORTED_LATER: Final = _ReportedLater()
Result = dict[str, Any] | None | _ReportedLater
T = TypeVar("T", bound=TaskMessage)
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


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

    def __init__(self, bus: Bus, kind: Kind, task: TaskMessage, msg: NatsMessage, attempt: int):
        self.bus = bus
        self.kind = kind
        self.task = task
        self.attempt = attempt
        self.report_id, self.report_kind = task.reported_as(kind)
        self._msg = msg

    async def keep_alive(self) -> None:
        """Tell the bus this long task is still running (resets ack_wait)."""
        await self._msg.in_progress()

    async def event(self, type_: EventType, **fields: Any) -> None:
        await self.bus.emit(
            TaskEvent(
                task_id=self.report_id,
                kind=self.report_kind,
                type=type_,
                attempt=self.attempt,
                priority=self.task.priority,
                parent_id=self.task.parent_id,
                **fields,
            )
        )


def error_of(exc: BaseException) -> TaskError:
    """What a client is shown of a failure: our messages verbatim, others by type only."""
    if isinstance(exc, HelplineError):
        return TaskError(type=type(exc).__name__, message=exc.message)
    return TaskError(type="InternalError", message=f"unexpected {type(exc).__name__}")


async def run_task(
    ctx: TaskContext,
    msg: NatsMessage,
    handler: Callable[[TaskContext], Awaitable[Result]],
    policy: RetryPolicy,
) -> None:
    """Run one delivery of a task and settle its message."""
    if ctx.task.expired():
        await ctx.event(
            EventType.EXPIRED,
            error=error_of(DeadlineExpired("deadline passed before the task ran")),
        )
        await msg.reject()
        return
    await ctx.event(EventType.STARTED)
    heartbeat = asyncio.create_task(_keep_alive(ctx, ctx.bus.layout.ack_wait_s / 3))
    try:
        result = await handler(ctx)
    except asyncio.CancelledError:
        # Shutting down: hand the message back now rather than after ack_wait.
        with contextlib.suppress(Exception):
            await asyncio.shield(msg.nack())
        raise
    except Deferred as exc:
        await _defer(ctx, msg, exc, policy)
    except Permanent as exc:
        log.info("task %s failed: %s", ctx.task.task_id, exc.message)
        type_ = EventType.EXPIRED if isinstance(exc, DeadlineExpired) else EventType.FAILED
        await ctx.event(type_, error=error_of(exc))
        await msg.reject()
    except Exception as exc:
        await _retry_or_dead_letter(ctx, msg, exc, policy)
    else:
        if not isinstance(result, _ReportedLater):
            await ctx.event(EventType.SUCCEEDED, result=result or {})
        await msg.ack()
    finally:
        heartbeat.cancel()


async def _keep_alive(ctx: TaskContext, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        await ctx.keep_alive()


async def _defer(ctx: TaskContext, msg: NatsMessage, exc: Deferred, policy: RetryPolicy) -> None:
    delay = exc.retry_after if exc.retry_after is not None else policy.base_s
    await ctx.bus.add_deferral(ctx.task.task_id)
    await ctx.event(
        EventType.RETRYING,
        error=error_of(exc),
        result={"retry_in_s": round(delay, 3), "deferred": True},
    )
    await msg.nack(delay=delay)


async def _retry_or_dead_letter(
    ctx: TaskContext, msg: NatsMessage, exc: Exception, policy: RetryPolicy
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
    msg: NatsMessage,
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
    await bus.broker.publish(
        letter,
        subjects.dlq(kind, subject_id, bus.layout.prefix),
        stream=subjects.dlq_stream(bus.layout.prefix),
        headers={"Nats-Msg-Id": f"{subject_id}:dlq:{attempts}"},
        timeout=5.0,
    )


async def _reject_poison(bus: Bus, kind: Kind, msg: NatsMessage, exc: ValidationError) -> None:
    """A message that is not a valid task: dead-letter it at once, fail its task if it names one."""
    task_id = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        task_id = str(json.loads(msg.body).get("task_id") or "")
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
    )
    error = TaskError(type="InvalidMessage", message=f"not a valid {kind} task: {problems}")
    log.warning("poison message on %s: %s", kind, error.message)
    await dead_letter(bus, kind, task_id or "unknown", None, msg, error, delivery_count(msg))
    if task_id and _SUBJECT_TOKEN.match(task_id):
        await bus.emit(TaskEvent(task_id=task_id, kind=kind, type=EventType.FAILED, error=error))
    await msg.reject()


def delivery_count(msg: NatsMessage) -> int:
    """How many times the bus has delivered this message (1 on first delivery)."""
    try:
        meta = msg.raw_message.metadata
    except NotJSMessageError:  # FastStream's in-memory test broker
        return 1
    return int(meta.num_delivered) if meta and meta.num_delivered else 1


def subscribe_tasks(
    router: NatsRouter,
    bus: Bus,
    kind: Kind,
    model: type[T],
    handler: Callable[[T, TaskContext], Awaitable[Result]],
    *,
    concurrency: int,
    policy: RetryPolicy,
    priorities: tuple[Priority, ...] = subjects.PRIORITIES_HIGH_FIRST,
) -> None:
    """Subscribe `handler` to every priority of `kind` through the shared durable consumers."""
    lay = bus.layout

    async def consume(msg: NatsMessage) -> None:
        try:
            task = model.model_validate_json(msg.body)
        except ValidationError as exc:
            await _reject_poison(bus, kind, msg, exc)
            return
        delivered = delivery_count(msg)
        attempt = delivered
        if delivered > 1:
            report_id, _ = task.reported_as(kind)
            if await bus.task_finished(report_id):
                await msg.ack()
                return
            attempt = max(1, delivered - await bus.deferrals(task.task_id))
        ctx = TaskContext(bus, kind, task, msg, attempt)
        await run_task(ctx, msg, lambda c: handler(task, c), policy)

    # FastStream reads the annotations to inject the message; with postponed evaluation they
    # would stay strings it cannot resolve in this closure.
    consume.__annotations__ = {"msg": NatsMessage, "return": None}

    for priority in priorities:
        config = lay.consumer_config(kind, priority)
        router.subscriber(
            config.filter_subject or "",
            stream=JStream(lay.task_stream(kind), declare=False),
            durable=config.durable_name,
            config=config,
            pull_sub=PullSub(batch_size=1, timeout=1.0),
            max_workers=max(1, concurrency),
            ack_policy=AckPolicy.MANUAL,
            title=f"{kind}-{priority}",
        )(consume)
