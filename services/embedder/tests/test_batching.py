from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pytest
from qdrant_client import QdrantClient

from helpline.common.breaker import BreakerPolicy, CircuitBreaker
from helpline.common.chunking import chunk_document, text_document
from helpline.common.messages import ChunkBatch
from helpline.common.subjects import Priority
from helpline.common.vectors import QdrantServerStore
from helpline.embedder.batching import ChunkPool, Vectors
from helpline.embedder.indexing import Indexer

DIM = 4


class FakeModel:
    """Row i of a call is [number of the text, its length, 0, 1]; records every call."""

    def __init__(self, *, fail: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail
        self.release = asyncio.Event()
        self.release.set()
        self.running = asyncio.Event()
        self.priorities: list[Priority | None] = []

    async def embed_async(
        self, texts: Sequence[str], batch_size: int = 32, *, priority: Priority | None = None
    ) -> Vectors:
        self.calls.append(list(texts))
        self.priorities.append(priority)
        self.running.set()
        await self.release.wait()
        self.running.clear()
        if self.fail is not None:
            raise self.fail
        rows = [[float(text.split()[-1]), float(len(text)), 0.0, 1.0] for text in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), DIM)


def page(number: int, chunks: int) -> list[str]:
    return [f"page {number} chunk {number * 100 + i}" for i in range(chunks)]


def own_rows(texts: list[str], rows: Vectors) -> bool:
    return [int(r[0]) for r in rows] == [int(t.split()[-1]) for t in texts]


async def test_pages_waiting_together_share_one_model_call_and_get_their_own_rows() -> None:
    model = FakeModel()
    pool = ChunkPool(model, max_chunks=256, wait_s=0.2)
    pages = [page(n, 11) for n in range(1, 6)]
    try:
        results = await asyncio.gather(*(pool.embed_async(texts) for texts in pages))
    finally:
        await pool.close()
    assert len(model.calls) == 1
    assert sorted(model.calls[0]) == sorted(t for texts in pages for t in texts)
    assert all(own_rows(texts, rows) for texts, rows in zip(pages, results, strict=True))


async def test_a_call_holds_at_most_max_chunks_of_whole_pages() -> None:
    model = FakeModel()
    pool = ChunkPool(model, max_chunks=25, wait_s=0.2)
    pages = [page(1, 10), page(2, 10), page(3, 10), page(4, 40), page(5, 3)]
    try:
        results = await asyncio.gather(*(pool.embed_async(texts) for texts in pages))
    finally:
        await pool.close()
    # Oldest first, whole pages only; a page larger than the limit goes alone.
    assert [len(call) for call in model.calls] == [20, 10, 40, 3]
    assert all(own_rows(texts, rows) for texts, rows in zip(pages, results, strict=True))


async def test_pages_arriving_during_a_call_go_in_the_next_one() -> None:
    model = FakeModel()
    model.release.clear()
    pool = ChunkPool(model, max_chunks=256, wait_s=0.01)
    try:
        first = asyncio.create_task(pool.embed_async(page(1, 5)))
        await model.running.wait()
        later = [asyncio.create_task(pool.embed_async(page(n, 5))) for n in (2, 3, 4)]
        await asyncio.sleep(0.05)
        assert len(model.calls) == 1  # the model is called once at a time
        model.release.set()
        await asyncio.gather(first, *later)
    finally:
        await pool.close()
    assert [len(call) for call in model.calls] == [5, 15]


async def test_the_next_call_takes_the_most_urgent_pages_first() -> None:
    model = FakeModel()
    model.release.clear()
    pool = ChunkPool(model, max_chunks=20, wait_s=0.01)
    try:
        first = asyncio.create_task(pool.embed_async(page(1, 5), priority=Priority.BULK))
        await model.running.wait()
        # While the model is busy: a crawl's backlog, then one urgent page, then more bulk.
        waiting = [
            asyncio.create_task(pool.embed_async(page(2, 10), priority=Priority.BULK)),
            asyncio.create_task(pool.embed_async(page(3, 10), priority=Priority.LOW)),
            asyncio.create_task(pool.embed_async(page(4, 10), priority=Priority.BULK)),
            asyncio.create_task(pool.embed_async(page(5, 5), priority=Priority.HIGH)),
            asyncio.create_task(pool.embed_async(page(6, 5))),
        ]
        await asyncio.sleep(0.05)
        model.release.set()
        results = await asyncio.gather(first, *waiting)
    finally:
        await pool.close()
    pages_of_call = [sorted({int(t.split()[1]) for t in call}) for call in model.calls]
    # high (5) and normal (6) first, then low (3), then bulk oldest first (2, then 4).
    assert pages_of_call == [[1], [3, 5, 6], [2, 4]]
    expected = [page(n, 5 if n in (1, 5, 6) else 10) for n in (1, 2, 3, 4, 5, 6)]
    assert all(own_rows(texts, rows) for texts, rows in zip(expected, results, strict=True))


async def test_a_lone_page_is_embedded_once_the_wait_is_over() -> None:
    model = FakeModel()
    pool = ChunkPool(model, max_chunks=256, wait_s=0.01)
    try:
        rows = await asyncio.wait_for(pool.embed_async(page(1, 3)), 5)
    finally:
        await pool.close()
    assert own_rows(page(1, 3), rows)


async def test_a_failed_call_fails_each_of_its_pages_and_the_pool_goes_on() -> None:
    model = FakeModel(fail=RuntimeError("model crashed"))
    pool = ChunkPool(model, max_chunks=256, wait_s=0.2)
    try:
        results = await asyncio.gather(
            *(pool.embed_async(page(n, 4)) for n in (1, 2)), return_exceptions=True
        )
        assert [type(r) for r in results] == [RuntimeError, RuntimeError]
        model.fail = None
        rows = await pool.embed_async(page(3, 2))
    finally:
        await pool.close()
    assert own_rows(page(3, 2), rows)


async def test_a_cancelled_page_is_left_out_of_the_call() -> None:
    model = FakeModel()
    model.release.clear()
    pool = ChunkPool(model, max_chunks=256, wait_s=0.01)
    try:
        first = asyncio.create_task(pool.embed_async(page(1, 2)))
        await model.running.wait()
        gone = asyncio.create_task(pool.embed_async(page(2, 2)))
        kept = asyncio.create_task(pool.embed_async(page(3, 2)))
        await asyncio.sleep(0)
        gone.cancel()  # its handler was stopped (shutdown): its message goes back to the bus
        model.release.set()
        await asyncio.gather(first, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        await pool.close()
    assert model.calls[1] == page(3, 2)


async def test_closing_the_pool_cancels_the_pages_it_holds() -> None:
    model = FakeModel()
    model.release.clear()
    pool = ChunkPool(model, max_chunks=256, wait_s=0.01)
    running = asyncio.create_task(pool.embed_async(page(1, 2)))
    await model.running.wait()
    waiting = asyncio.create_task(pool.embed_async(page(2, 2)))
    await asyncio.sleep(0)
    await pool.close()
    for task in (running, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task


def chunk_batch(number: int, paragraphs: int) -> ChunkBatch:
    text = "\n\n".join(
        f"Paragraph {i} of page {number} {number * 100 + i}" for i in range(paragraphs)
    )
    url = f"https://docs.example/{number}.html"
    return ChunkBatch(
        task_id=f"embed-{number}",
        report_task_id=f"page-{number}",
        url=url,
        title=f"Page {number}",
        brand="acme",
        chunks=chunk_document(text_document(text, url=url), max_chars=45, overlap_chars=0),
        fetched_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
async def test_pages_indexed_together_each_hold_exactly_their_own_points() -> None:
    model = FakeModel()
    store = QdrantServerStore(QdrantClient(location=":memory:"), "pool", DIM)
    store.ensure_collection()
    pool = ChunkPool(model, max_chunks=256, wait_s=0.2)
    indexer = Indexer(store, pool, CircuitBreaker("vector-store", BreakerPolicy()))
    batches = [chunk_batch(n, 4) for n in range(1, 5)]
    try:
        results = await asyncio.gather(*(indexer.index(b) for b in batches))
        stored = [store.hashes_for_url(b.url, "acme") for b in batches]
    finally:
        await pool.close()
        store.close()
    assert len(model.calls) == 1
    assert [r["embedded"] for r in results] == [4, 4, 4, 4]
    for b, hashes in zip(batches, stored, strict=True):
        assert sorted(hashes.values()) == sorted(c.content_hash for c in b.chunks)


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
async def test_the_indexer_hands_the_model_its_pages_priority() -> None:
    model = FakeModel()
    store = QdrantServerStore(QdrantClient(location=":memory:"), "urgent", DIM)
    store.ensure_collection()
    indexer = Indexer(store, model, CircuitBreaker("vector-store", BreakerPolicy()))
    batch = chunk_batch(1, 2).model_copy(update={"priority": Priority.HIGH})
    try:
        await indexer.index(batch)
    finally:
        store.close()
    assert model.priorities == [Priority.HIGH]
