"""Embedder subscribers: a chunk batch in, points in Qdrant, the page's task reported done."""

from __future__ import annotations

from helpline.common.bus import Bus
from helpline.common.messages import ChunkBatch
from helpline.common.subjects import Kind
from helpline.common.worker import Result, RetryPolicy, TaskConsumer, TaskContext
from helpline.embedder.indexing import Indexer


def build_consumers(
    bus: Bus, indexer: Indexer, *, concurrency: int, policy: RetryPolicy
) -> list[TaskConsumer]:
    async def embed(batch: ChunkBatch, ctx: TaskContext) -> Result:
        return await indexer.index(batch)

    return [
        TaskConsumer(bus, Kind.EMBED, ChunkBatch, embed, concurrency=concurrency, policy=policy)
    ]
