"""Answering a question: embed it, retrieve from the index, compose a cited answer.

Retrieval is hybrid: the question's dense vector and its lexical (BM25) vector are ranked
by the store and fused with reciprocal-rank fusion. The fused list is then diversified:
at most `PER_PAGE` chunks of one page, so a long page cannot fill every source slot. The
pages kept bring along their other fused chunks (up to `QUOTABLE_PER_PAGE` each): they do
not change the pages' order, but the fact asked for often stands in a page's third or
fifth best chunk, and the answer may quote it.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from helpline.common.breaker import CircuitBreaker
from helpline.common.embedding import Embedder
from helpline.common.knowledge import guarded
from helpline.common.lexical import encode_query
from helpline.common.messages import Answer, QueryTask, Source
from helpline.common.observability import span
from helpline.common.vectors import Hit, VectorStore
from helpline.rag.batching import QuestionBatcher
from helpline.rag.compose import PASSAGES_PER_PAGE, compose

_tracer = trace.get_tracer("helpline.rag")

#: Chunks of one page that count towards the candidates' limit.
PER_PAGE = 2
#: Chunks of one kept page handed to the composer.
QUOTABLE_PER_PAGE = PASSAGES_PER_PAGE


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


def with_page_mates(kept: list[Hit], hits: list[Hit], per_page: int) -> list[Hit]:
    """`kept`, then the other hits of its pages, best first, at most `per_page` a page."""
    counts: dict[str, int] = {}
    for hit in kept:
        url = str(hit.payload.get("url", ""))
        counts[url] = counts.get(url, 0) + 1
    chosen = {hit.id for hit in kept}
    mates: list[Hit] = []
    for hit in hits:
        url = str(hit.payload.get("url", ""))
        if hit.id in chosen or url not in counts or counts[url] >= per_page:
            continue
        counts[url] += 1
        mates.append(hit)
    return kept + mates


class Answerer:
    def __init__(
        self,
        store: VectorStore,
        model: Embedder,
        breaker: CircuitBreaker,
        candidates_per_source: int = 4,
        *,
        model_lanes: int = 1,
    ) -> None:
        self.store = store
        self.model = model
        self.breaker = breaker
        self.candidates = candidates_per_source
        # Questions waiting for the model share its next call; `model_lanes` calls at once.
        self.questions = QuestionBatcher(model, lanes=model_lanes)

    async def retrieve(self, question: str, top_k: int, brand: str | list[str] | None) -> list[Hit]:
        """Candidate chunks for the question, diversified across pages, then their page mates."""
        with span(_tracer, "embed question", kind=SpanKind.INTERNAL):
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
        return with_page_mates(diversify(hits, PER_PAGE, wanted), hits, QUOTABLE_PER_PAGE)

    async def answer(self, task: QueryTask) -> Answer:
        hits = await self.retrieve(task.question, task.top_k, searched_brands(task))
        text, sources = traced_compose(task.question, hits, task.top_k)
        return Answer(task_id=task.task_id, answer=text, sources=sources)


def traced_compose(question: str, hits: list[Hit], top_k: int) -> tuple[str, list[Source]]:
    """`compose` in its span (the question stays out of it)."""
    with span(
        _tracer, "compose answer", kind=SpanKind.INTERNAL, attributes={"helpline.hits": len(hits)}
    ):
        text, sources = compose(question, hits, top_k)
        trace.get_current_span().set_attribute("helpline.answer.sources", len(sources))
    return text, sources


def searched_brands(task: QueryTask) -> str | list[str] | None:
    """The brand a question searches, or the brands (a brand-limited key's, when it named
    none); None: every brand."""
    return task.brand if task.brand is not None else task.brands
