"""Question embeddings in micro-batches: questions that arrive while the model is busy share
its next call.

One model call at a time: the first question runs at once, and every question that arrives
meanwhile waits for the next call, which takes them all (up to `max_batch`). Nothing waits
for a batch to fill, so a lone question pays nothing, and under load the calls no longer
compete for the cores. On the packaged graph (the default) a batch shares the model's
runs; with `HELPLINE_QUERY_INT8` (int8 products, `one_per_call`) each question of a batch
runs alone, and a batch saves only the hand-offs to the model's thread.
"""

from __future__ import annotations

import asyncio
import contextvars

import numpy as np
import numpy.typing as npt
from opentelemetry import trace

from helpline.common.embedding import Embedder
from helpline.rag.embedcache import CachedQueryEmbedder

Vector = npt.NDArray[np.float32]


class QuestionBatcher:
    """`embed(question)` for many concurrent questions, one model call per waiting batch."""

    def __init__(self, model: Embedder, *, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model = model
        self.max_batch = max_batch
        self._waiting: list[tuple[str, asyncio.Future[Vector]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.calls = 0

    async def embed(self, question: str) -> Vector:
        """The question's unit vector; a cached one (a `CachedQueryEmbedder`) without waiting."""
        if isinstance(self.model, CachedQueryEmbedder):
            known = self.model.cached(question)
            if known is not None:
                trace.get_current_span().set_attribute("helpline.embed.cached", True)
                return known
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        self._waiting.append((question, future))
        if self._runner is None:
            # In a context of its own: it embeds every waiting question, not only the first's.
            self._runner = asyncio.create_task(self._run(), context=contextvars.Context())
        return await future

    async def _run(self) -> None:
        batch: list[tuple[str, asyncio.Future[Vector]]] = []
        try:
            while self._waiting:
                # A question whose caller gave up (cancelled) is not embedded.
                batch = [(q, f) for q, f in self._waiting[: self.max_batch] if not f.done()]
                del self._waiting[: self.max_batch]
                if batch:
                    await self._embed(batch)
                batch = []
        finally:
            self._runner = None
            # Cancelled (shutdown) part-way: no question may wait forever.
            for _, future in (*batch, *self._waiting):
                future.cancel()
            self._waiting.clear()

    async def _embed(self, batch: list[tuple[str, asyncio.Future[Vector]]]) -> None:
        self.calls += 1
        try:
            vectors = await asyncio.to_thread(self.model.embed, [q for q, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), vector in zip(batch, vectors, strict=True):
            if not future.done():
                future.set_result(vector)
