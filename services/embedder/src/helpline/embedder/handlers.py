"""Embedder subscribers: a chunk batch in, points in Qdrant, the page's task reported done."""

from __future__ import annotations

from faststream.nats import NatsRouter

from helpline.common.bus import Bus
from helpline.common.messages import ChunkBatch
from helpline.common.subjects import Kind
from helpline.common.worker import Result, RetryPolicy, TaskContext, subscribe_tasks
from helpline.embedder.indexing import Indexer


def build_router(
    bus: Bus, indexer: Indexer, *, concurrency: int, policy: RetryPolicy
) -> NatsRouter:
    router = NatsRouter()

    async def embed(batch: ChunkBatch, ctx: TaskContext) -> Result:
        return await indexer.index(batch)

    subscribe_tasks(
        router, bus, Kind.EMBED, ChunkBatch, embed, concurrency=concurrency, policy=policy
    )
    return router
