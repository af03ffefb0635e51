"""Rag wiring: the model and the store are opened here unless the host shares its own."""

from __future__ import annotations

from faststream.nats import NatsRouter

from helpline.common.bus import Bus
from helpline.common.knowledge import Knowledge, store_breaker
from helpline.common.runtime import retry_policy
from helpline.common.worker import TaskConsumer
from helpline.rag.handlers import build_consumers
from helpline.rag.retrieval import Answerer
from helpline.rag.settings import RagSettings


class RagComponent:
    name = "rag"

    def __init__(self, settings: RagSettings, *, knowledge: Knowledge | None = None) -> None:
        self.settings = settings
        self._owns_knowledge = knowledge is None
        self.knowledge = knowledge or Knowledge.open(settings, settings.data_dir)

    def routers(self, bus: Bus) -> list[NatsRouter]:
        return []

    def consumers(self, bus: Bus) -> list[TaskConsumer]:
        answerer = Answerer(
            self.knowledge.store,
            self.knowledge.model,
            store_breaker(bus.breakers, self.settings),
            self.settings.rag_candidates,
        )
        policy = retry_policy(self.settings)
        return build_consumers(
            bus, answerer, concurrency=self.settings.rag_concurrency, policy=policy
        )

    async def start(self, bus: Bus) -> None:
        return None

    async def stop(self) -> None:
        if self._owns_knowledge:
            self.knowledge.close()
