"""The Qdrant Edge backend: a shard in a local folder, searched in process (`EdgeStore`).

Qdrant Edge builds its vector index and flushes to disk only when asked; `EdgeStore.maintain`
does both, between writes and in lulls of searches, so questions are not held behind them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import qdrant_edge as edge

from helpline.common.lexical import SparseVector
from helpline.common.vectors.fusion import _prefetch_limit, fuse_ids
from helpline.common.vectors.store import (
    _SCROLL_PAGE,
    INDEXED_FIELDS,
    SPARSE_VECTOR,
    Hit,
    IndexedPoint,
    MissingSparseVector,
    VectorLike,
    VectorStore,
    _as_list,
)

__all__ = ["EdgeStore"]

#: Threads of an Edge shard's search pool (see `EdgeStore`).
SEARCH_THREADS = 1
#: Qdrant Edge builds its vector index only when asked (`EdgeStore.maintain`).
OPTIMIZE_AFTER_POINTS = 2_000
OPTIMIZE_QUIET_S = 20.0
#: Housekeeping holds the interpreter lock a questioner needs (an optimize for seconds, a
#: flush for 8-60 ms), so it waits until no search ran for this long ...
SEARCH_LULL_S = 1.0
#: ... but a flush waits at most this long past its due time, and an optimize this long
#: past the end of writing, however busy the searches.
FLUSH_MAX_DEFER_S = 30.0
OPTIMIZE_MAX_DEFER_S = 120.0

log = logging.getLogger(__name__)


class EdgeStore(VectorStore):
    """A Qdrant Edge shard in a local folder, used in process.

    Safe to share between threads without a lock of ours: the binding holds the GIL for
    the whole of every call, so calls run one at a time (checked with concurrent
    upserts, queries, scrolls and flushes).

    Only one process may open a folder at a time: the WAL is locked while it is open.
    Writes are flushed by `maintain`, at most every `flush_interval` seconds.
    """

    holds_gil = True

    def __init__(self, path: Path, dim: int, *, flush_interval: float = 5.0) -> None:
        self.path = path
        self.dim = dim
        self._flush_interval = flush_interval
        self._flush_lock = threading.Lock()
        config = edge.EdgeConfig(
            vectors=edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine),
            sparse_vectors={SPARSE_VECTOR: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)},
            # The binding holds the GIL for a whole call, so a search never overlaps the
            # process's other work anyway; handing its one or two segments to a pool of
            # threads only adds the hand-offs (0.9 -> 0.7 ms a hybrid search at 13k points).
            max_search_threads=SEARCH_THREADS,
        )
        if path.is_dir() and any(path.iterdir()):
            # Passing the config makes load fail on a shard of another dimension, or one
            # created before it had a sparse vector.
            try:
                self._shard = edge.EdgeShard.load(str(path), config)
            except Exception as exc:
                if SPARSE_VECTOR in str(exc):
                    raise MissingSparseVector(
                        f"the index at {path} has no sparse vector {SPARSE_VECTOR!r} (it predates "
                        "hybrid retrieval): stop Helpline, delete that folder and crawl again"
                    ) from exc
                raise
        else:
            path.mkdir(parents=True, exist_ok=True)
            self._shard = edge.EdgeShard.create(str(path), config)
        self._flushed_at = time.monotonic()
        # Writes made and writes flushed: a write during a flush (which lets go of the GIL
        # for part of its run) is not counted as flushed.
        self._writes = self._flushed_writes = 0
        self._searched_at = 0.0
        self._closed = False
        # Points written since the last optimize. A loaded shard counts all its points:
        # optimizing what is already indexed returns at once.
        self._unindexed = self._shard.count(edge.CountRequest(exact=True))
        self._written_at = 0.0

    def ensure_collection(self) -> None:
        """Create the keyword payload indexes the shard does not have yet."""
        present = self._shard.info().payload_schema
        for field in INDEXED_FIELDS:
            if field not in present:
                self._shard.update(
                    edge.UpdateOperation.create_field_index(field, edge.PayloadSchemaType.Keyword)
                )
        self._flush_now()

    def upsert(self, points: Sequence[IndexedPoint]) -> None:
        """Insert points, replacing any stored under the same id."""
        if not points:
            return
        batch = [edge.Point(p.id, self._vectors(p), p.payload) for p in points]
        self._shard.update(edge.UpdateOperation.upsert_points(batch))
        self._unindexed += len(batch)
        self._after_write()

    def delete(self, ids: Sequence[str]) -> None:
        """Remove points by id; unknown ids are ignored."""
        if not ids:
            return
        self._shard.update(edge.UpdateOperation.delete_points(list(ids)))
        self._after_write()

    def _vectors(self, point: IndexedPoint) -> dict[str, edge.NamedVector]:
        vectors: dict[str, edge.NamedVector] = {"": _as_list(point.vector, self.dim)}
        if point.sparse is not None and point.sparse.indices:
            vectors[SPARSE_VECTOR] = edge.SparseVector(point.sparse.indices, point.sparse.values)
        return vectors

    def search(
        self,
        vector: VectorLike,
        limit: int,
        brand: str | None = None,
        sparse: SparseVector | None = None,
    ) -> list[Hit]:
        """The `limit` best points, only from `brand` when given; hybrid (RRF) with `sparse`."""
        self._searched_at = time.monotonic()
        dense = edge.Query.Nearest(_as_list(vector, self.dim))
        if sparse is None or not sparse.indices:
            request = edge.QueryRequest(
                limit=limit, query=dense, filter=_edge_filter(brand=brand), with_payload=True
            )
            return [Hit(str(p.id), p.score, p.payload or {}) for p in self._shard.query(request)]
        lexical = edge.Query.Nearest(
            edge.SparseVector(sparse.indices, sparse.values), using=SPARSE_VECTOR
        )
        # Ranked without payloads: turning a payload into Python objects costs more than
        # the search, and most candidates are dropped by the fusion. Candidates stay the
        # binding's (id, score) until fused: only the fused few become `Hit`s.
        requests = [
            edge.QueryRequest(
                limit=_prefetch_limit(limit),
                query=query,
                filter=_edge_filter(brand=brand),
                with_payload=False,
            )
            for query in (dense, lexical)
        ]
        dense_points, lexical_points = self._shard.query_batch(edge.QueryBatchRequest(requests))
        fused = fuse_ids(
            [(p.id, p.score) for p in dense_points],
            [(p.id, p.score) for p in lexical_points],
            limit,
        )
        records = self._shard.retrieve([point for point, _ in fused], True, False)
        payloads = {record.id: record.payload or {} for record in records}
        # A point deleted since it was ranked is left out.
        return [
            Hit(str(point), score, payloads[point]) for point, score in fused if point in payloads
        ]

    def hashes_for_url(self, url: str, brand: str) -> dict[str, str]:
        """Point id -> content_hash of every point stored for this page."""
        hashes: dict[str, str] = {}
        offset: edge.PointId | None = None
        while True:
            records, offset = self._shard.scroll(
                edge.ScrollRequest(
                    offset=offset,
                    limit=_SCROLL_PAGE,
                    filter=_edge_filter(brand=brand, url=url),
                    with_payload=["content_hash"],
                )
            )
            for record in records:
                hashes[str(record.id)] = str((record.payload or {}).get("content_hash", ""))
            if offset is None:
                return hashes

    def count(self, brand: str | None = None) -> int:
        """The exact number of points, only of `brand` when given."""
        return self._shard.count(edge.CountRequest(exact=True, filter=_edge_filter(brand=brand)))

    def close(self) -> None:
        """Flush to disk (Edge's close does) and release the folder; closing twice is harmless."""
        with self._flush_lock:
            if self._closed:
                return
            self._shard.close()
            self._closed = True

    def maintain(self) -> bool:
        """Housekeeping, called periodically by the writer: build the vector index (HNSW)
        over what was written once writing has paused, and flush what is pending.

        Until an optimize, new points are searched exhaustively: 3 ms a query at 13k
        points, 0.6 ms once indexed. Optimizing holds the GIL for its whole run (2.6-3.5 s
        at 13k points), so it waits until `OPTIMIZE_AFTER_POINTS` points are new and nothing
        was written for `OPTIMIZE_QUIET_S`: after a crawl, not during one. Both wait for a
        lull in searches (`SEARCH_LULL_S`), so that questions being asked are not held
        behind them, up to their `*_MAX_DEFER_S`. Returns whether it optimized.
        """
        now = time.monotonic()
        lull = now - self._searched_at >= SEARCH_LULL_S
        if (
            self._unindexed >= OPTIMIZE_AFTER_POINTS
            and now - self._written_at >= OPTIMIZE_QUIET_S
            and (lull or now - self._written_at >= OPTIMIZE_QUIET_S + OPTIMIZE_MAX_DEFER_S)
        ):
            with self._flush_lock:
                if self._closed:
                    return False
                started = time.monotonic()
                self._shard.optimize()
                self._flush_locked()
            log.info(
                "vector index optimized (%d new points) in %.1f s",
                self._unindexed,
                time.monotonic() - started,
            )
            self._unindexed = 0
            return True
        due = now - self._flushed_at - self._flush_interval
        pending = self._writes != self._flushed_writes
        if pending and due >= 0 and (lull or due >= FLUSH_MAX_DEFER_S):
            self._flush_now()
        return False

    def _after_write(self) -> None:
        # Every update is appended to the WAL (an mmap), so it survives the process
        # being killed without any flush: load() replays it. flush() msyncs the WAL and
        # the segments (8 ms a few writes after the last, 60 ms after 20k points, much of
        # it holding the GIL), which only adds safety against an OS crash or power loss and
        # keeps the WAL replay at startup short. Like a Qdrant server's flush_interval_sec
        # it runs every few seconds, from `maintain`: not in the write a question may be
        # waiting behind.
        self._written_at = time.monotonic()
        self._writes += 1

    def _flush_now(self) -> None:
        with self._flush_lock:
            if not self._closed:
                self._flush_locked()

    def _flush_locked(self) -> None:
        """Flush, holding `_flush_lock`; only the writes made before it count as flushed."""
        writes = self._writes
        self._shard.flush()
        self._flushed_at = time.monotonic()
        self._flushed_writes = writes


def _edge_filter(*, brand: str | None = None, url: str | None = None) -> edge.Filter | None:
    conditions: list[edge.ConditionType] = [
        edge.FieldCondition(key, match=edge.MatchValue(value))
        for key, value in (("brand", brand), ("url", url))
        if value is not None
    ]
    return edge.Filter(must=conditions) if conditions else None
