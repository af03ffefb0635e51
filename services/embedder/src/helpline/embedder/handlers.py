"""Embedder subscribers: a chunk batch in, points in Qdrant, the page's task reported done."""

from __future__ import annotations

from helpline.common.answercache import bump_generation
from helpline.common.bus import Bus
from helpline.common.messages import ChunkBatch, LineageStep, utcnow
from helpline.common.observability import current_trace_id
from helpline.common.pagestate import PageStates, PageTexts
from helpline.common.retrypolicy import RetryPolicy
from helpline.common.subjects import Kind
from helpline.common.taskpool import TaskConsumer
from helpline.common.worker import Result, TaskContext
from helpline.embedder.indexing import Indexer, IndexTimes


def build_consumers(
    bus: Bus, indexer: Indexer, *, concurrency: int, policy: RetryPolicy
) -> list[TaskConsumer]:
    pages = PageStates(bus.buckets)
    texts = PageTexts(bus.buckets)

    async def embed(batch: ChunkBatch, ctx: TaskContext) -> Result:
        times = IndexTimes()
        result = await indexer.index(batch, times)
        # Before the page is reported done: once it is, no stale answer may be served. A
        # redelivery bumps too: the attempt that committed the change may have died before.
        # A page taken out (no chunks, no state) bumps even with nothing found to remove.
        gone = (batch.page_key is not None and batch.page_state is None) or batch.drop_brand
        if result.get("embedded") or result.get("removed") or gone or ctx.attempt > 1:
            await bump_generation(bus, batch.brand)
        if batch.page_key is not None:
            # Only now is the page in the index: the next re-scrape may ask "changed since?".
            state = batch.page_state
            if state is not None:
                trace_id = current_trace_id()
                lineage = [
                    *state.lineage,
                    LineageStep(
                        step="embedded",
                        at=times.embed_at,
                        duration_ms=round(times.embed_ms, 3),
                        task_id=batch.task_id,
                        trace_id=trace_id,
                    ),
                    LineageStep(
                        step="indexed",
                        at=times.write_at,
                        duration_ms=round(times.write_ms, 3),
                        task_id=batch.task_id,
                        trace_id=trace_id,
                    ),
                ]
                state = state.model_copy(
                    update={
                        "chunks": len(batch.chunks),
                        "brand": batch.brand,
                        "fetched_at": batch.fetched_at,
                        "indexed_at": utcnow(),
                        "task_id": batch.report_task_id,
                        "lineage": lineage,
                        "misses": 0,
                        "changed_at": (
                            utcnow()
                            if result.get("embedded") or result.get("removed")
                            else state.changed_at or utcnow()
                        ),
                    }
                )
            # The text first: a listed page always has the text of its indexed version.
            if state is None or batch.markdown is not None:
                await texts.save(batch.page_key, batch.markdown if state else None)
            await pages.save(batch.page_key, state)
        return result

    return [
        TaskConsumer(bus, Kind.EMBED, ChunkBatch, embed, concurrency=concurrency, policy=policy)
    ]
