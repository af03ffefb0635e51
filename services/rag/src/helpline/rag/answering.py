"""A question's answer: retrieve, compose extractively, and let the model write it if one is set.

The extractive answer is always composed (it costs microseconds); with a language model
configured it is the fallback, returned with `fallback_reason` when the model is
unavailable (breaker open, timeout, error), so customers always get an answer. A streamed
question gets its sources and then the model's text as it is generated, through `emit`;
if the model fails part-way, the final answer is the extractive one (the gateway tells the
client to start the text again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from helpline.common.messages import Answer, AnswerPart, QueryTask, utcnow
from helpline.rag.compose import merge_pages
from helpline.rag.llm import LanguageModel, ModelUnavailable, Passage
from helpline.rag.retrieval import PER_PAGE, Answerer, searched_brands, traced_compose

# Of the query's remaining time, this much is kept for the reply after the model gave up.
REPLY_MARGIN_S = 0.5

Emit = Callable[[AnswerPart], Awaitable[None]]


class Responder:
    def __init__(self, answerer: Answerer, model: LanguageModel | None = None) -> None:
        self.answerer = answerer
        self.model = model

    async def answer(self, task: QueryTask, emit: Emit | None = None) -> Answer:
        hits = await self.answerer.retrieve(task.question, task.top_k, searched_brands(task))
        text, sources = traced_compose(task.question, hits, task.top_k)
        extractive = Answer(task_id=task.task_id, answer=text, sources=sources)
        if self.model is None or not sources:
            return extractive
        pages = merge_pages(hits)[: task.top_k]
        # The model reads each page's best passages, as many as diversifying kept.
        passages = [
            Passage(title=p.title, url=p.url, text="\n".join(p.passages[:PER_PAGE])) for p in pages
        ]
        remaining = None
        if task.deadline is not None:
            remaining = (task.deadline - utcnow()).total_seconds() - REPLY_MARGIN_S
        try:
            with self.model.traced(len(passages), stream=bool(task.stream and emit)):
                if task.stream and emit is not None:
                    await emit(AnswerPart(task_id=task.task_id, sources=sources))
                    pieces: list[str] = []
                    async for piece in self.model.stream(
                        task.question, passages, timeout_s=remaining
                    ):
                        pieces.append(piece)
                        await emit(AnswerPart(task_id=task.task_id, text=piece))
                    generated = "".join(pieces)
                else:
                    generated = await self.model.answer(
                        task.question, passages, timeout_s=remaining
                    )
        except ModelUnavailable as exc:
            return extractive.model_copy(update={"fallback_reason": str(exc)})
        return extractive.model_copy(update={"answer": generated, "answer_mode": "llm"})
