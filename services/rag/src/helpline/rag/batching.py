"""Question embeddings in micro-batches: questions that arrive while the model is busy share
its next call.

At most `lanes` model calls at a time (`HELPLINE_QUERY_LANES`): a question runs at once
when a lane is free, and every question that arrives while all lanes are busy waits for the
next free one, which takes its share of those waiting (all of them with one lane; up to
`max_batch`). Nothing waits for a batch to fill, so a lone question pays nothing. A
question's model runs on one thread (`HELPLINE_QUERY_THREADS`), so one lane keeps one core
busy: with one lane the model's calls never compete for the cores, but on two cores half of
them idle while questions queue behind the model (bench/results/query_latency.md). On the
int8 graph (the default, `HELPLINE_QUERY_INT8`) each question of a batch runs alone, so
its vector never depends on who asks beside it, and a batch saves only the hand-offs to
the model's thread; on the packaged graph a batch shares the model's runs.
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
    """`embed(question)` for many concurrent questions, one model call per waiting batch and
    at most `lanes` calls at a time."""

    def __init__(self, model: Embedder, *, max_batch: int = 32, lanes: int = 1) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if lanes < 1:
            raise ValueError("lanes must be at least 1")
        self.model = model
        self.max_batch = max_batch
        self.lanes = lanes
        self._waiting: list[tuple[str, asyncio.Future[Vector]]] = []
        self._runners: set[asyncio.Task[None]] = set()
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
        if len(self._runners) < self.lanes:
            # In a context of its own: it embeds every waiting question, not only the first's.
            self._runners.add(asyncio.create_task(self._run(), context=contextvars.Context()))
        return await future

    async def _run(self) -> None:
        batch: list[tuple[str, asyncio.Future[Vector]]] = []
        try:
            while self._waiting:
                # This lane's share of the waiting questions: the other lanes take the rest
                # as they come free.
                share = min(self.max_batch, -(-len(self._waiting) // self.lanes))
                # A question whose caller gave up (cancelled) is not embedded.
                batch = [(q, f) for q, f in self._waiting[:share] if not f.done()]
                del self._waiting[:share]
                if batch:
                    await self._embed(batch)
                batch = []
        finally:
            # At once, not in a done-callback: a question arriving next must see a free lane.
            current = asyncio.current_task()
            self._runners.discard(current)
            for _, future in batch:
                future.cancel()
            if not self._runners:
                # The last lane cancelled (shutdown) part-way: no question may wait forever.
                for _, future in self._waiting:
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
