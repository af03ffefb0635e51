"""Embedder wiring: the model and the store are opened here unless the host shares its own."""

from __future__ import annotations

from faststream.nats import NatsRouter

from helpline.common.bus import Bus
from helpline.common.knowledge import Knowledge, store_breaker
from helpline.common.runtime import retry_policy
from helpline.common.worker import TaskConsumer
from helpline.embedder.handlers import build_consumers
from helpline.embedder.indexing import Indexer
from helpline.embedder.settings import EmbedderSettings


class EmbedderComponent:
    name = "embedder"

    def __init__(self, settings: EmbedderSettings, *, knowledge: Knowledge | None = None) -> None:
        self.settings = settings
        self._owns_knowledge = knowledge is None
        self.knowledge = knowledge or Knowledge.open(settings, settings.data_dir)

    def routers(self, bus: Bus) -> list[NatsRouter]:
        return []

    def consumers(self, bus: Bus) -> list[TaskConsumer]:
        breaker = store_breaker(bus.breakers, self.settings)
        indexer = Indexer(
            self.knowledge.store, self.knowledge.model, breaker, self.settings.embed_batch_size
        )
        policy = retry_policy(self.settings)
        return build_consumers(
            bus, indexer, concurrency=self.settings.embedder_concurrency, policy=policy
        )

    async def start(self, bus: Bus) -> None:
        return None

    async def stop(self) -> None:
        if self._owns_knowledge:
            self.knowledge.close()
