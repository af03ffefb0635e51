"""Answering a question: embed it, retrieve from the index, compose a cited answer.

Retrieval is hybrid: the question's dense vector and its lexical (BM25) vector are ranked
by the store and fused with reciprocal-rank fusion. The fused list is then diversified:
at most `PER_PAGE` chunks of one page, so a long page cannot fill every source slot.
"""

from __future__ import annotations

from helpline.common.breaker import CircuitBreaker
from helpline.common.embedding import Embedder
from helpline.common.knowledge import guarded
from helpline.common.lexical import encode_query
from helpline.common.messages import Answer, QueryTask
from helpline.common.vectors import Hit, VectorStore
from helpline.rag.batching import QuestionBatcher
from helpline.rag.compose import compose

#: Chunks of one page kept among the candidates (compose quotes at most two per source).
PER_PAGE = 2


def diversify(hits: list[Hit], per_page: int, limit: int) -> list[Hit]:
    """The best hits in order, at most `per_page` of one url, at most `limit` in all."""
    kept: list[Hit] = []
    seen: dict[str, int] = {}
    for hit in hits:
        url = str(hit.payload.get("url", ""))
        if seen.get(url, 0) >= per_page:
            continue
        seen[url] = seen.get(url, 0) + 1
        kept.append(hit)
        if len(kept) == limit:
            break
    return kept


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
        # Questions asked at the same time share one model call.
        self.questions = QuestionBatcher(model)

    async def retrieve(self, question: str, top_k: int, brand: str | None) -> list[Hit]:
        """Candidate chunks for the question, best first, diversified across pages."""
        vector = await self.questions.embed(question)
        wanted = top_k * self.candidates
        # Over-fetch: pages beyond PER_PAGE chunks are cut, and their places must be filled.
        hits = await guarded(
            self.breaker,
            self.store.search,
            vector,
            wanted * 2,
            brand,
            encode_query(question),
            inline=self.store.holds_gil,
        )
        return diversify(hits, PER_PAGE, wanted)

    async def answer(self, task: QueryTask) -> Answer:
        hits = await self.retrieve(task.question, task.top_k, task.brand)
        text, sources = compose(task.question, hits, task.top_k)
        return Answer(task_id=task.task_id, answer=text, sources=sources)
