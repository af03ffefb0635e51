"""Running a task: the one place that decides ack, nak-with-backoff, term and dead letters.

A service's handler is a domain call that returns the task's result (a dict), or
`REPORTED_LATER` when another service will report the outcome (a scraped page is done
when the embedder has indexed it). It raises `Retryable` or `Permanent`; `run_task`
turns that into the bus action and the task event, always emitting before settling so a
crash in between repeats an event (harmless) rather than loses one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsRouter, PullSub
from faststream.nats.annotations import NatsMessage
from nats.errors import NotJSMessageError

from helpline.common import subjects
from helpline.common.errors import DeadlineExpired, HelplineError, Permanent, Retryable
from helpline.common.messages import EventType, TaskError, TaskEvent, TaskMessage
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


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with equal jitter (half fixed, half random), from the delivery count."""

    base_s: float = 1.0
    cap_s: float = 30.0
    max_attempts: int = 4

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1`."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(attempt - 1, 0))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
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
    try:
        result = await handler(ctx)
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


async def _retry_or_dead_letter(
    ctx: TaskContext, msg: NatsMessage, exc: Exception, policy: RetryPolicy
) -> None:
    err = error_of(exc)
    if not isinstance(exc, Retryable):
        log.exception("task %s raised unexpectedly", ctx.task.task_id, exc_info=exc)
    if ctx.attempt >= policy.max_attempts:
        await ctx.bus.broker.publish(
            msg.body,
            subjects.dlq(ctx.kind, ctx.bus.layout.prefix),
            stream=subjects.dlq_stream(ctx.bus.layout.prefix),
            headers={
                "Nats-Msg-Id": f"{ctx.task.task_id}:dlq",
                "Helpline-Task-Id": ctx.task.task_id,
                "Helpline-Kind": str(ctx.kind),
                "Helpline-Attempts": str(ctx.attempt),
                "Helpline-Error-Type": err.type,
                "Helpline-Error": err.message,
            },
        )
        gave_up = TaskError(
            type=err.type, message=f"gave up after {ctx.attempt} attempts: {err.message}"
        )
        await ctx.event(EventType.FAILED, error=gave_up)
        await msg.reject()
        return
    retry_after = exc.retry_after if isinstance(exc, Retryable) else None
    delay = policy.delay(ctx.attempt, retry_after)
    await ctx.event(EventType.RETRYING, error=err, result={"retry_in_s": round(delay, 3)})
    await msg.nack(delay=delay)


def attempt_of(msg: NatsMessage) -> int:
    """The delivery count of this message (1 on first delivery)."""
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

    async def consume(body: model, msg: NatsMessage) -> None:  # type: ignore[valid-type]
        ctx = TaskContext(bus, kind, body, msg, attempt_of(msg))
        await run_task(ctx, msg, lambda c: handler(body, c), policy)

    # FastStream reads the annotations to decode the body; with postponed evaluation the
    # closure's `model` would stay a string, so bind the real types.
    consume.__annotations__ = {"body": model, "msg": NatsMessage, "return": None}

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
