"""Indexing a page's chunks: embed what changed, upsert it, delete what vanished."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from helpline.common.breaker import CircuitBreaker
from helpline.common.knowledge import guarded
from helpline.common.lexical import encode_document
from helpline.common.messages import ChunkBatch, utcnow
from helpline.common.observability import span
from helpline.common.vectors import IndexedPoint, VectorStore, point_id
from helpline.embedder.batching import TextEmbedder

_tracer = trace.get_tracer("helpline.embedder")


def point_scope(brand: str, url: str) -> str:
    """What a page's point ids are derived from: its brand and URL, so two brands indexing
    one URL never collide."""
    return f"{brand}\x1f{url}"


@dataclass
class IndexTimes:
    """When a page's embedding and its writes to the store started, and how long each took."""

    embed_at: datetime = field(default_factory=utcnow)
    embed_ms: float = 0.0
    write_at: datetime = field(default_factory=utcnow)
    write_ms: float = 0.0


class Indexer:
    def __init__(
        self,
        store: VectorStore,
        model: TextEmbedder,
        breaker: CircuitBreaker,
        batch_size: int = 32,
    ) -> None:
        self.store = store
        self.model = model
        self.breaker = breaker
        self.batch_size = batch_size

    async def drop_brand(self, brand: str, times: IndexTimes) -> dict[str, Any]:
        """Delete every point of `brand` (a brand taken out whole)."""
        times.write_at, started = utcnow(), time.perf_counter()
        ids = await guarded(
            self.breaker, self.store.ids_of_brand, brand, inline=self.store.holds_gil
        )
        if ids:
            await guarded(self.breaker, self.store.delete, ids, inline=self.store.holds_gil)
        times.write_ms = (time.perf_counter() - started) * 1000
        return {"brand": brand, "chunks_indexed": 0, "embedded": 0, "removed": len(ids)}

    async def index(self, batch: ChunkBatch, times: IndexTimes | None = None) -> dict[str, Any]:
        """Make the index hold exactly this page's chunks; returns what changed (and fills
        `times`, when given)."""
        times = times or IndexTimes()
        if batch.drop_brand:
            return await self.drop_brand(batch.brand, times)
        existing = await guarded(
            self.breaker,
            self.store.hashes_for_url,
            batch.url,
            batch.brand,
            inline=self.store.holds_gil,
        )
        wanted = {
            point_id(point_scope(batch.brand, batch.url), c.position): c for c in batch.chunks
        }
        changed = [(pid, c) for pid, c in wanted.items() if existing.get(pid) != c.content_hash]
        times.embed_at, started = utcnow(), time.perf_counter()
        points: list[IndexedPoint] = []
        if changed:
            attributes = {
                "helpline.embed.texts": len(changed),
                "helpline.embed.batch_size": self.batch_size,
            }
            with span(_tracer, "embed", kind=SpanKind.INTERNAL, attributes=attributes):
                vectors = await self.model.embed_async(
                    [c.text for _, c in changed], self.batch_size, priority=batch.priority
                )
            fetched_at = batch.fetched_at.isoformat()
            points = [
                IndexedPoint(
                    id=pid,
                    vector=vector,
                    # The page title joins the lexical vector: chunks rarely repeat it.
                    sparse=encode_document(f"{batch.title}\n{chunk.text}"),
                    payload={
                        "url": batch.url,
                        "title": batch.title,
                        "brand": batch.brand,
                        "text": chunk.text,
                        "heading": chunk.heading,
                        "position": chunk.position,
                        "content_hash": chunk.content_hash,
                        "fetched_at": fetched_at,
                        **_page_fields(batch.url, chunk.page),
                    },
                )
                for (pid, chunk), vector in zip(changed, vectors, strict=True)
            ]
        times.embed_ms = (time.perf_counter() - started) * 1000
        times.write_at, started = utcnow(), time.perf_counter()
        if points:
            await guarded(self.breaker, self.store.upsert, points, inline=self.store.holds_gil)
        stale = [pid for pid in existing if pid not in wanted]
        if stale:
            await guarded(self.breaker, self.store.delete, stale, inline=self.store.holds_gil)
        times.write_ms = (time.perf_counter() - started) * 1000
        new = sum(1 for pid, _ in changed if pid not in existing)
        return {
            "url": batch.url,
            "chunks_indexed": len(wanted),
            "embedded": len(changed),
            "new": new,
            "changed": len(changed) - new,
            "unchanged": len(wanted) - len(changed),
            "removed": len(stale),
        }


def _page_fields(url: str, page: int | None) -> dict[str, Any]:
    """A PDF chunk is cited at its page: `source_url` is what a source links to."""
    if page is None:
        return {}
    return {"page": page, "source_url": f"{url}#page={page}"}
