"""Rag wiring: the model and the store are opened here unless the host shares its own."""

from __future__ import annotations

import httpx

from helpline.common.breaker import BreakerPolicy
from helpline.common.bus import Bus
from helpline.common.knowledge import Knowledge, store_breaker
from helpline.common.runtime import retry_policy
from helpline.common.taskpool import TaskConsumer
from helpline.rag.answering import Responder
from helpline.rag.embedcache import CachedQueryEmbedder
from helpline.rag.handlers import build_consumers
from helpline.rag.llm import LanguageModel
from helpline.rag.retrieval import Answerer
from helpline.rag.settings import RagSettings

LLM_BREAKER = "language-model"


class RagComponent:
    name = "rag"

    def __init__(self, settings: RagSettings, *, knowledge: Knowledge | None = None) -> None:
        self.settings = settings
        self._owns_knowledge = knowledge is None
        self.knowledge = knowledge or Knowledge.open(settings, settings.data_dir)
        self.embeddings = CachedQueryEmbedder(self.knowledge.model, settings.rag_embedding_cache)
        self._http: httpx.AsyncClient | None = None

    def consumers(self, bus: Bus) -> list[TaskConsumer]:
        answerer = Answerer(
            self.knowledge.store,
            self.embeddings,
            store_breaker(bus.breakers, self.settings),
            self.settings.rag_candidates,
            model_lanes=self.settings.query_lanes,
        )
        responder = Responder(answerer, self._language_model(bus))
        policy = retry_policy(self.settings)
        return build_consumers(
            bus, responder, concurrency=self.settings.rag_concurrency, policy=policy
        )

    def _language_model(self, bus: Bus) -> LanguageModel | None:
        s = self.settings
        if not (s.llm_base_url and s.llm_model):
            return None
        headers = (
            {"Authorization": f"Bearer {s.llm_api_key.get_secret_value()}"} if s.llm_api_key else {}
        )
        self._http = httpx.AsyncClient(base_url=s.llm_base_url, headers=headers)
        breaker = bus.breakers.get(
            LLM_BREAKER, BreakerPolicy(failures=s.llm_breaker_failures, open_s=s.llm_breaker_open_s)
        )
        return LanguageModel(
            self._http, s.llm_model, breaker, timeout_s=s.llm_timeout_s, max_tokens=s.llm_max_tokens
        )

    async def start(self, bus: Bus) -> None:
        return None

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._owns_knowledge:
            self.knowledge.close()
