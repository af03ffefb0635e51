"""Embedder wiring: the model and the store are opened here unless the host shares its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from helpline.common.bus import Bus
from helpline.common.knowledge import Knowledge, load_model, store_breaker
from helpline.common.runtime import retry_policy
from helpline.common.taskpool import TaskConsumer
from helpline.embedder.batching import ChunkPool
from helpline.embedder.handlers import build_consumers
from helpline.embedder.indexing import Indexer
from helpline.embedder.settings import EmbedderSettings

log = logging.getLogger(__name__)
#: How often the store is asked whether it needs housekeeping (`VectorStore.maintain`).
MAINTAIN_EVERY_S = 5.0


class EmbedderComponent:
    name = "embedder"

    def __init__(self, settings: EmbedderSettings, *, knowledge: Knowledge | None = None) -> None:
        self.settings = settings
        self._owns_knowledge = knowledge is None
        niceness = settings.embed_index_niceness
        # Indexing alone may use the faster int8 graph; questions need the exact one.
        int8 = settings.embed_index_int8
        self.knowledge = knowledge or Knowledge.open(
            settings, settings.data_dir, niceness=niceness, int8_products=int8, for_questions=False
        )
        # Sharing a process with rag (`helpline up`): the shared model is the questions' (one
        # thread, one question a call); indexing gets its own, at a lower CPU priority, so a
        # re-index never slows the questions answered beside it.
        own_model = knowledge is not None
        self.index_model = (
            load_model(settings, niceness=niceness, int8_products=int8) if own_model else None
        )
        self._maintaining: asyncio.Task[None] | None = None
        self.pool: ChunkPool | None = None

    def consumers(self, bus: Bus) -> list[TaskConsumer]:
        breaker = store_breaker(bus.breakers, self.settings)
        # Pages in hand share model calls (batching.py).
        self.pool = ChunkPool(
            self.index_model or self.knowledge.model,
            max_chunks=self.settings.embed_pool_chunks,
            wait_s=self.settings.embed_pool_wait_ms / 1000,
        )
        indexer = Indexer(
            self.knowledge.store,
            self.pool,
            breaker,
            self.settings.embed_batch_size,
        )
        policy = retry_policy(self.settings)
        return build_consumers(
            bus, indexer, concurrency=self.settings.embedder_concurrency, policy=policy
        )

    async def start(self, bus: Bus) -> None:
        # Before any work: a store opened from disk is indexed now rather than mid-traffic.
        try:
            await asyncio.to_thread(self.knowledge.store.maintain)
        except Exception as exc:
            log.warning("vector store housekeeping failed: %r", exc)
        self._maintaining = asyncio.create_task(self._maintain())

    async def _maintain(self) -> None:
        """The writer keeps the store in shape (Qdrant Edge: builds its index after a crawl)."""
        while True:
            await asyncio.sleep(MAINTAIN_EVERY_S)
            try:
                await asyncio.to_thread(self.knowledge.store.maintain)
            except Exception as exc:  # the store is down: its breaker tells; try next time
                log.warning("vector store housekeeping failed: %r", exc)

    async def stop(self) -> None:
        if self._maintaining is not None:
            self._maintaining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintaining
            self._maintaining = None
        if self.pool is not None:
            await self.pool.close()
        if self.index_model is not None:
            self.index_model.close()
        if self._owns_knowledge:
            self.knowledge.close()
