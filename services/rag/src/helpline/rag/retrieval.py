"""Answering a question: embed it, retrieve from the index, compose a cited answer."""

from __future__ import annotations

import asyncio

from helpline.common.breaker import CircuitBreaker
from helpline.common.embedding import Embedder
from helpline.common.knowledge import guarded
from helpline.common.messages import Answer, QueryTask
from helpline.common.vectors import Hit, VectorStore
from helpline.rag.compose import compose


class Answerer:
    def __init__(
        self,
        store: VectorStore,
        model: Embedder,
        breaker: CircuitBreaker,
        candidates_per_source: int = 4,
    ) -> None:
        self.store = store
        self.model = model
        self.breaker = breaker
        self.candidates = candidates_per_source

    async def retrieve(self, task: QueryTask) -> list[Hit]:
        vector = (await asyncio.to_thread(self.model.embed, [task.question]))[0]
        return await guarded(
            self.breaker, self.store.search, vector, task.top_k * self.candidates, task.brand
        )

    async def answer(self, task: QueryTask) -> Answer:
        hits = await self.retrieve(task)
        text, sources = compose(task.question, hits, task.top_k)
        return Answer(task_id=task.task_id, answer=text, sources=sources)
