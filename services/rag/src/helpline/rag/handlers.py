"""Rag subscribers: a question in, the answer back to the waiting gateway and as an event."""

from __future__ import annotations

import dataclasses
import logging

from helpline.common.answercache import store_answer
from helpline.common.bus import Bus
from helpline.common.messages import REPLY_PART_HEADER, Answer, AnswerPart, QueryTask
from helpline.common.retrypolicy import RetryPolicy
from helpline.common.subjects import Kind
from helpline.common.taskpool import TaskConsumer
from helpline.common.worker import Result, TaskContext, error_of
from helpline.rag.answering import Responder

log = logging.getLogger(__name__)


def build_consumers(
    bus: Bus, responder: Responder, *, concurrency: int, policy: RetryPolicy
) -> list[TaskConsumer]:

    async def query(task: QueryTask, ctx: TaskContext) -> Result:
        reply_to = task.reply_to

        async def emit(part: AnswerPart) -> None:
            if reply_to:
                await bus.send(reply_to, part, {REPLY_PART_HEADER: "1"})

        try:
            answer = await responder.answer(task, emit)
        except Exception as exc:
            # The gateway is waiting: tell it now rather than let it time out.
            if task.reply_to:
                await bus.send(
                    task.reply_to,
                    Answer(
                        task_id=task.task_id, answer="", sources=[], error=error_of(exc).message
                    ),
                )
            raise
        # Cached before the reply: whoever got this answer and asks again gets the cached one.
        # A fallback answer is not cached: once the model is back, the question deserves its
        # generated answer.
        if task.cache_key and answer.fallback_reason is None:
            try:
                await store_answer(bus.buckets, task.cache_key, answer)
            except Exception as exc:
                log.warning("could not cache the answer to %s: %r", task.task_id, exc)
        if task.reply_to:
            await bus.send(task.reply_to, answer)
        return {"sources": [s.url for s in answer.sources], "answer_mode": answer.answer_mode}

    # A question is worth answering once; its deadline is seconds away, so no retries.
    once = dataclasses.replace(policy, max_attempts=1)
    # The gateway waits for the answer itself: only the outcome is reported, and it writes
    # the query's record (one event instead of two on the hot path).
    return [
        TaskConsumer(
            bus,
            Kind.QUERY,
            QueryTask,
            query,
            concurrency=concurrency,
            policy=once,
            report_start=False,
        )
    ]
