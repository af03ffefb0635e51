"""Several pages' chunks in one model call; each page still indexed, reported and acked alone.

A crawl sends the embedder one message per page, about a dozen chunks each. Embedded page by
page, the model runs small batches of mixed lengths, most of each padded to its longest text;
gathered from many pages and sorted by length, the same chunks run in full batches of
similar lengths, about twice as fast on the PostgreSQL manual (the packaged graph). On the
int8 graph, the default, each chunk runs alone, one per thread: there a pooled call keeps
every thread busy to its end and saves hand-offs. `ChunkPool` is the gathering
point: each page's handler awaits `embed_async` for its own texts, the pool runs one model
call for every page waiting (up to `max_chunks`), and hands each handler its own rows back.

Nothing changes about delivery: a page's message is acked by its own handler after its own
points are written, so a process that dies with pages in the pool has acked none of them and
the bus redelivers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
from opentelemetry import trace

from helpline.common.subjects import Priority

Vectors = npt.NDArray[np.float32]


class TextEmbedder(Protocol):
    """What indexing needs of a model: texts in, one row per text out, off the event loop."""

    async def embed_async(
        self, texts: Sequence[str], batch_size: int = 32, *, priority: Priority | None = None
    ) -> Vectors: ...


@dataclass
class _Request:
    texts: Sequence[str]
    batch_size: int
    #: Priority weight (1 critical .. 10 bulk): lower is taken first.
    weight: int
    future: asyncio.Future[Vectors] = field(repr=False)
    #: Texts in the model call that embedded these (theirs and other pages').
    call_texts: int = 0


@dataclass
class PoolStats:
    """Model calls made and texts embedded (for tests and the bench)."""

    calls: int = 0
    texts: int = 0
    sizes: list[int] = field(default_factory=list)


class ChunkPool:
    """Gathers concurrent `embed_async` requests into model calls of up to `max_chunks` texts.

    The model is called once at a time. When it is free and texts wait, the pool waits at
    most `wait_s` for more to arrive (it stops waiting as soon as `max_chunks` are there), then
    embeds everything waiting, whole requests only: a request larger than `max_chunks` goes
    alone. Requests that arrive during a call wait for the next one, which takes the most
    urgent first (by the page's task priority, oldest first within one): a page scraped at
    high priority waits for the call in progress, never behind a crawl's backlog in hand.
    """

    def __init__(self, model: TextEmbedder, *, max_chunks: int = 256, wait_s: float = 0.05):
        self.model = model
        self.max_chunks = max(1, max_chunks)
        self.wait_s = max(0.0, wait_s)
        self.stats = PoolStats()
        self._waiting: list[_Request] = []
        self._waiting_texts = 0
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def embed_async(
        self, texts: Sequence[str], batch_size: int = 32, *, priority: Priority | None = None
    ) -> Vectors:
        """The rows for `texts`, embedded together with whatever other pages are waiting."""
        if not texts:
            return await self.model.embed_async(texts, batch_size)
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        weight = (priority or Priority.NORMAL).weight
        request = _Request(texts, batch_size, weight, future)
        self._waiting.append(request)
        self._waiting_texts += len(texts)
        self._arrived.set()
        if self._waiting_texts >= self.max_chunks:
            self._full.set()
        if self._runner is None or self._runner.done():
            # In a context of its own: it serves every page, not the one that started it (whose
            # trace its logs would otherwise carry).
            self._runner = asyncio.create_task(
                self._run(), name="embed-pool", context=contextvars.Context()
            )
        # A cancelled handler (shutdown) leaves its request behind; the pool skips it.
        vectors = await future
        # The model call this page shared, on the page's embed span.
        trace.get_current_span().set_attribute("helpline.embed.call_texts", request.call_texts)
        return vectors

    async def close(self) -> None:
        """Stop the pool; requests still waiting fail with CancelledError."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        for request in self._take_all():
            request.future.cancel()

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            await self._linger()
            batch = self._take()
            if not batch:
                continue
            await self._embed(batch)

    async def _linger(self) -> None:
        """Give other pages up to `wait_s` to join, unless the call is full already."""
        if self._waiting_texts >= self.max_chunks or self.wait_s == 0:
            return
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self.wait_s)

    def _take(self) -> list[_Request]:
        """Whole requests, most urgent and then oldest first, up to `max_chunks` texts (at
        least one request)."""
        self._waiting.sort(key=lambda request: request.weight)  # stable: oldest first within
        taken: list[_Request] = []
        count = 0
        while self._waiting:
            request = self._waiting[0]
            if request.future.done():  # its handler was cancelled
                self._waiting.pop(0)
                self._waiting_texts -= len(request.texts)
                continue
            if taken and count + len(request.texts) > self.max_chunks:
                break
            self._waiting.pop(0)
            self._waiting_texts -= len(request.texts)
            taken.append(request)
            count += len(request.texts)
        return taken

    def _take_all(self) -> list[_Request]:
        taken, self._waiting, self._waiting_texts = self._waiting, [], 0
        return taken

    async def _embed(self, batch: list[_Request]) -> None:
        texts = [text for request in batch for text in request.texts]
        batch_size = min(request.batch_size for request in batch)
        try:
            vectors = await self.model.embed_async(texts, batch_size)
        except asyncio.CancelledError:
            # Closed mid-call: nobody waits for ever.
            for request in batch:
                request.future.cancel()
            raise
        except Exception as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        self.stats.calls += 1
        self.stats.texts += len(texts)
        self.stats.sizes.append(len(texts))
        start = 0
        for request in batch:
            request.call_texts = len(texts)
            end = start + len(request.texts)
            if not request.future.done():
                request.future.set_result(vectors[start:end])
            start = end
