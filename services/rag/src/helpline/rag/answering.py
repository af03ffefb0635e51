"""A question's answer: retrieve, compose extractively, and let the model write it if one is set.

The extractive answer is always composed (it costs microseconds); with a language model
configured it is the fallback, returned with `fallback_reason` when the model is
unavailable (breaker open, timeout, error), so customers always get an answer.
"""

from __future__ import annotations

from helpline.common.messages import Answer, QueryTask, utcnow
from helpline.rag.compose import compose, merge_pages
from helpline.rag.llm import LanguageModel, ModelUnavailable, Passage
from helpline.rag.retrieval import Answerer

# Of the query's remaining time, this much is kept for the reply after the model gave up.
REPLY_MARGIN_S = 0.5


class Responder:
    def __init__(self, answerer: Answerer, model: LanguageModel | None = None) -> None:
        self.answerer = answerer
        self.model = model

    async def answer(self, task: QueryTask) -> Answer:
        hits = await self.answerer.retrieve(task)
        text, sources = compose(task.question, hits, task.top_k)
        extractive = Answer(task_id=task.task_id, answer=text, sources=sources)
        if self.model is None or not sources:
            return extractive
        pages = merge_pages(hits)[: task.top_k]
        passages = [Passage(title=p.title, url=p.url, text="\n".join(p.passages)) for p in pages]
        remaining = None
        if task.deadline is not None:
            remaining = (task.deadline - utcnow()).total_seconds() - REPLY_MARGIN_S
        try:
            generated = await self.model.answer(task.question, passages, timeout_s=remaining)
        except ModelUnavailable as exc:
            return extractive.model_copy(update={"fallback_reason": str(exc)})
        return extractive.model_copy(update={"answer": generated, "answer_mode": "llm"})
