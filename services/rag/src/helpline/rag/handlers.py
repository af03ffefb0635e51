"""Rag subscribers: a question in, the answer back to the waiting gateway and as an event."""

from __future__ import annotations

from helpline.common.bus import Bus
from helpline.common.messages import Answer, QueryTask
from helpline.common.subjects import Kind
from helpline.common.worker import Result, RetryPolicy, TaskConsumer, TaskContext, error_of
from helpline.rag.retrieval import Answerer


def build_consumers(
    bus: Bus, answerer: Answerer, *, concurrency: int, policy: RetryPolicy
) -> list[TaskConsumer]:

    async def query(task: QueryTask, ctx: TaskContext) -> Result:
        try:
            answer = await answerer.answer(task)
        except Exception as exc:
            # The gateway is waiting: tell it now rather than let it time out.
            if task.reply_to:
                await bus.broker.publish(
                    Answer(
                        task_id=task.task_id, answer="", sources=[], error=error_of(exc).message
                    ),
                    task.reply_to,
                )
            raise
        if task.reply_to:
            await bus.broker.publish(answer, task.reply_to)
        return {"sources": [s.url for s in answer.sources]}

    # A question is worth answering once; its deadline is seconds away, so no retries.
    once = RetryPolicy(base_s=policy.base_s, cap_s=policy.cap_s, max_attempts=1)
    return [TaskConsumer(bus, Kind.QUERY, QueryTask, query, concurrency=concurrency, policy=once)]
