"""Embedder subscribers: a chunk batch in, points in Qdrant, the page's task reported done."""

from __future__ import annotations

from helpline.common.answercache import bump_generation
from helpline.common.bus import Bus
from helpline.common.messages import ChunkBatch, utcnow
from helpline.common.pagestate import PageStates
from helpline.common.subjects import Kind
from helpline.common.taskpool import TaskConsumer
from helpline.common.worker import Result, RetryPolicy, TaskContext
from helpline.embedder.indexing import Indexer


def build_consumers(
    bus: Bus, indexer: Indexer, *, concurrency: int, policy: RetryPolicy
) -> list[TaskConsumer]:
    pages = PageStates(bus.buckets)

    async def embed(batch: ChunkBatch, ctx: TaskContext) -> Result:
        result = await indexer.index(batch)
        # Before the page is reported done: once it is, no stale answer may be served. A
        # redelivery bumps too: the attempt that committed the change may have died before.
        if result.get("embedded") or result.get("removed") or ctx.attempt > 1:
            await bump_generation(bus, batch.brand)
        if batch.page_key is not None:
            # Only now is the page in the index: the next re-scrape may ask "changed since?".
            state = batch.page_state
            if state is not None:
                state = state.model_copy(
                    update={
                        "chunks": len(batch.chunks),
                        "brand": batch.brand,
                        "fetched_at": batch.fetched_at,
                        "indexed_at": utcnow(),
                        "task_id": batch.report_task_id,
                    }
                )
            await pages.save(batch.page_key, state)
        return result

    return [
        TaskConsumer(bus, Kind.EMBED, ChunkBatch, embed, concurrency=concurrency, policy=policy)
    ]
