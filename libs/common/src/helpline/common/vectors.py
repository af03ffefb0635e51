"""The vector store: one interface over Qdrant Edge (in process) and a Qdrant server.

Points are chunks of documentation pages. Their payload carries at least `brand`,
`url` and `content_hash`, the three fields with keyword indexes. Each point has a dense
vector (the unnamed default, cosine) and a sparse lexical vector (`SPARSE_VECTOR`, with
Qdrant's IDF modifier; see `helpline.common.lexical`). A search given both asks for the two
rankings in one batch request and fuses them with reciprocal-rank fusion (`fuse`), here
rather than in Qdrant: the weak lexical hits are cut first, which needs their scores.

A collection created before hybrid retrieval has no sparse vector; opening it raises
`MissingSparseVector`, which says how to re-create it (delete it, then re-crawl).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import qdrant_edge as edge
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from helpline.common.lexical import SparseVector

__all__ = [
    "INDEXED_FIELDS",
    "LEXICAL_CUT",
    "LEXICAL_WEIGHT",
    "RRF_K",
    "SPARSE_VECTOR",
    "EdgeStore",
    "Hit",
    "IndexedPoint",
    "MissingSparseVector",
    "QdrantServerStore",
    "VectorLike",
    "VectorStore",
    "fuse",
    "fuse_ids",
    "open_store",
    "point_id",
    "rrf",
]

VectorLike = Sequence[float] | npt.NDArray[np.floating[Any]]
K = TypeVar("K", bound=Hashable)

#: Payload fields filtered on, indexed as keywords before any point is written.
INDEXED_FIELDS = ("brand", "url", "content_hash")

#: Name of the sparse lexical vector; the dense vector is the unnamed default.
SPARSE_VECTOR = "lexical"
#: Reciprocal-rank fusion constant: a point at rank r (from 0) of a list adds 1 / (RRF_K + r).
RRF_K = 10
#: Lexical hits scoring below this fraction of the best lexical hit are left out of the fusion:
#: RRF sees only ranks, and a chunk sharing one common word with the question would
#: otherwise count as much as one holding the exact error code the question asks about.
LEXICAL_CUT = 0.7
#: The lexical ranking's weight in the fusion (the dense one's is 1). On the PostgreSQL
#: question set (bench/retrieval_eval.py) dense alone ranks the right page first more often
#: than lexical alone (recall@1 0.51 against 0.25); with the lexical list at 0.7 and the cut
#: at 0.7, hybrid recall@1 goes 0.434 -> 0.491 and MRR@10 0.547 -> 0.604, recall@5 stays.
LEXICAL_WEIGHT = 0.7

_SCROLL_PAGE = 256
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


class MissingSparseVector(RuntimeError):
    """The collection predates hybrid retrieval: it must be re-created and re-crawled."""


@dataclass(frozen=True)
class IndexedPoint:
    """A chunk's vector and payload, stored under a `point_id`."""

    id: str
    vector: VectorLike
    payload: dict[str, Any]
    sparse: SparseVector | None = None


@dataclass(frozen=True)
class Hit:
    """A search result: the point's id, its score and its payload.

    The score is the cosine similarity for a dense search; for a hybrid search, the fused
    reciprocal-rank score scaled to (0, 1]: 1 is first in both rankings.
    """

    id: str
    score: float
    payload: dict[str, Any]


def point_id(url: str, position: int) -> str:
    """The stable id of the chunk at `position` on `url`, so re-indexing overwrites it."""
    # position is an integer, so the text after the last "#" is never ambiguous.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{url}#{position}"))


class VectorStore(Protocol):
    """Dense cosine vectors with payload, filtered by brand."""

    #: Whether every call holds the GIL from start to end (an in-process engine): calling it
    #: from a thread then frees nothing for the event loop and only adds the hand-offs, so
    #: callers call it in place (`knowledge.guarded`). False: a call waits on I/O, off the loop.
    holds_gil: bool

    def ensure_collection(self) -> None:
        """Create the collection and its payload indexes if they are missing."""
        ...

    def upsert(self, points: Sequence[IndexedPoint]) -> None:
        """Insert points, replacing any stored under the same id."""
        ...

    def delete(self, ids: Sequence[str]) -> None:
        """Remove points by id; unknown ids are ignored."""
        ...

    def search(
        self,
        vector: VectorLike,
        limit: int,
        brand: str | None = None,
        sparse: SparseVector | None = None,
    ) -> list[Hit]:
        """The `limit` best points, only from `brand` when given; hybrid (RRF) with `sparse`."""
        ...

    def hashes_for_url(self, url: str, brand: str) -> dict[str, str]:
        """Point id -> content_hash of every point stored for this page."""
        ...

    def count(self, brand: str | None = None) -> int:
        """The exact number of points, only of `brand` when given."""
        ...

    def maintain(self) -> bool:
        """Housekeeping the store needs between writes; True when some was done."""
        ...

    def close(self) -> None:
        """Persist what is pending and release the store."""
        ...


def _as_list(vector: VectorLike, dim: int) -> list[float]:
    values: list[float] = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
    if len(values) != dim:
        raise ValueError(f"vector has {len(values)} dimensions, the store expects {dim}")
    return values


def _prefetch_limit(limit: int) -> int:
    # Each ranking contributes more candidates than are returned, so a point ranked well
    # by one and moderately by the other is still seen by both.
    return max(2 * limit, 20)


def _scaled(rrf_score: float, total_weight: float) -> float:
    """A fused RRF score as a fraction of the best possible (first in every ranking)."""
    return rrf_score * RRF_K / total_weight


def fuse(dense: Sequence[Hit], lexical: Sequence[Hit], limit: int) -> list[Hit]:
    """The dense and the lexical ranking fused by RRF, weak lexical hits left out."""
    by_id = {hit.id: hit for hit in (*lexical, *dense)}
    fused = fuse_ids(
        [(hit.id, hit.score) for hit in dense], [(hit.id, hit.score) for hit in lexical], limit
    )
    return [Hit(point, score, by_id[point].payload) for point, score in fused]


def fuse_ids(
    dense: Sequence[tuple[K, float]], lexical: Sequence[tuple[K, float]], limit: int
) -> list[tuple[K, float]]:
    """`fuse` over (id, score) pairs: the fused ids, best first, with `_scaled` scores."""
    floor = lexical[0][1] * LEXICAL_CUT if lexical else 0.0
    kept = [point for point, score in lexical if score >= floor]
    return _rrf_ids([[point for point, _ in dense], kept], limit, (1.0, LEXICAL_WEIGHT))


def rrf(
    rankings: Sequence[Sequence[Hit]], limit: int, weights: Sequence[float] | None = None
) -> list[Hit]:
    """Weighted reciprocal-rank fusion of rankings (best first), scored as `_scaled` fractions."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    hits: dict[str, Hit] = {}
    for ranking in rankings:
        for hit in ranking:
            hits.setdefault(hit.id, hit)
    fused = _rrf_ids([[hit.id for hit in ranking] for ranking in rankings], limit, weights)
    return [Hit(point, score, hits[point].payload) for point, score in fused]


def _rrf_ids(
    rankings: Sequence[Sequence[K]], limit: int, weights: Sequence[float]
) -> list[tuple[K, float]]:
    scores: dict[K, float] = {}
    for weight, ranking in zip(weights, rankings, strict=True):
        for rank, point in enumerate(ranking):
            scores[point] = scores.get(point, 0.0) + weight / (RRF_K + rank)
    best = sorted(scores, key=scores.__getitem__, reverse=True)[:limit]
    total = sum(weights)
    return [(point, _scaled(scores[point], total)) for point in best]


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


class QdrantServerStore(VectorStore):
    """A collection of a Qdrant server (or of qdrant_client's local mode, for tests)."""

    holds_gil = False

    def __init__(self, client: QdrantClient, collection: str, dim: int) -> None:
        self.client = client
        self.collection = collection
        self.dim = dim

    def ensure_collection(self) -> None:
        """Create the collection (dense cosine + sparse IDF vectors) and its keyword indexes."""
        if not self.client.collection_exists(self.collection):
            try:
                self.client.create_collection(
                    self.collection,
                    vectors_config=qm.VectorParams(size=self.dim, distance=qm.Distance.COSINE),
                    sparse_vectors_config={
                        SPARSE_VECTOR: qm.SparseVectorParams(modifier=qm.Modifier.IDF)
                    },
                )
            except Exception:
                # Another replica may have created it between the check and the call.
                if not self.client.collection_exists(self.collection):
                    raise
        sparse = self.client.get_collection(self.collection).config.params.sparse_vectors or {}
        if SPARSE_VECTOR not in sparse:
            raise MissingSparseVector(
                f"collection {self.collection!r} has no sparse vector {SPARSE_VECTOR!r} (it "
                "predates hybrid retrieval): delete the collection "
                f"(DELETE /collections/{self.collection}), restart and crawl again"
            )
        for field in INDEXED_FIELDS:
            # Idempotent on the server; local mode keeps no payload indexes and warns.
            self.client.create_payload_index(
                self.collection, field, field_schema=qm.PayloadSchemaType.KEYWORD, wait=True
            )

    def upsert(self, points: Sequence[IndexedPoint]) -> None:
        """Insert points, replacing any stored under the same id."""
        if not points:
            return
        self.client.upsert(
            self.collection,
            points=[
                qm.PointStruct(id=p.id, vector=self._vectors(p), payload=p.payload) for p in points
            ],
            wait=True,
        )

    def delete(self, ids: Sequence[str]) -> None:
        """Remove points by id; unknown ids are ignored."""
        if not ids:
            return
        points: list[qm.ExtendedPointId] = list(ids)
        self.client.delete(
            self.collection, points_selector=qm.PointIdsList(points=points), wait=True
        )

    def _vectors(self, point: IndexedPoint) -> dict[str, qm.Vector]:
        vectors: dict[str, qm.Vector] = {"": _as_list(point.vector, self.dim)}
        if point.sparse is not None and point.sparse.indices:
            vectors[SPARSE_VECTOR] = qm.SparseVector(
                indices=point.sparse.indices, values=point.sparse.values
            )
        return vectors

    def search(
        self,
        vector: VectorLike,
        limit: int,
        brand: str | None = None,
        sparse: SparseVector | None = None,
    ) -> list[Hit]:
        """The `limit` best points, only from `brand` when given; hybrid (RRF) with `sparse`."""
        dense = _as_list(vector, self.dim)
        query_filter = _server_filter(brand=brand)
        if sparse is None or not sparse.indices:
            response = self.client.query_points(
                self.collection,
                query=dense,
                query_filter=query_filter,
                limit=limit,
                with_payload=True,
            )
            return [Hit(str(p.id), p.score, p.payload or {}) for p in response.points]
        # Both rankings in one request, fused here as for Edge (see `fuse`).
        candidates = _prefetch_limit(limit)
        requests = [
            qm.QueryRequest(query=dense, filter=query_filter, limit=candidates, with_payload=True),
            qm.QueryRequest(
                query=qm.SparseVector(indices=sparse.indices, values=sparse.values),
                using=SPARSE_VECTOR,
                filter=query_filter,
                limit=candidates,
                with_payload=True,
            ),
        ]
        responses = self.client.query_batch_points(self.collection, requests)
        rankings = [
            [Hit(str(p.id), p.score, p.payload or {}) for p in response.points]
            for response in responses
        ]
        return fuse(rankings[0], rankings[1], limit)

    def hashes_for_url(self, url: str, brand: str) -> dict[str, str]:
        """Point id -> content_hash of every point stored for this page."""
        hashes: dict[str, str] = {}
        offset: qm.ExtendedPointId | None = None
        while True:
            records, next_offset = self.client.scroll(
                self.collection,
                scroll_filter=_server_filter(brand=brand, url=url),
                limit=_SCROLL_PAGE,
                offset=offset,
                with_payload=["content_hash"],
            )
            for record in records:
                hashes[str(record.id)] = str((record.payload or {}).get("content_hash", ""))
            if next_offset is None:
                return hashes
            offset = next_offset

    def count(self, brand: str | None = None) -> int:
        """The exact number of points, only of `brand` when given."""
        result = self.client.count(
            self.collection, count_filter=_server_filter(brand=brand), exact=True
        )
        return result.count

    def maintain(self) -> bool:
        """Nothing to do: a Qdrant server builds its indexes by itself."""
        return False

    def close(self) -> None:
        """Close the client (its connections, or local mode's storage)."""
        self.client.close()


def _server_filter(*, brand: str | None = None, url: str | None = None) -> qm.Filter | None:
    conditions: list[qm.Condition] = [
        qm.FieldCondition(key=key, match=qm.MatchValue(value=value))
        for key, value in (("brand", brand), ("url", url))
        if value is not None
    ]
    return qm.Filter(must=conditions) if conditions else None


def open_store(
    *, url: str | None, data_dir: Path, collection: str, dim: int, api_key: str | None = None
) -> VectorStore:
    """Open the store `url` names, ready to use.

    None: Qdrant Edge under data_dir/qdrant/<collection>; ":memory:" or "path:<dir>":
    qdrant_client's local mode (tests); anything else: a Qdrant server's URL.
    """
    store: VectorStore
    if url is None:
        store = EdgeStore(data_dir / "qdrant" / collection, dim)
    elif url == ":memory:":
        store = QdrantServerStore(QdrantClient(location=":memory:"), collection, dim)
    elif url.startswith("path:"):
        store = QdrantServerStore(QdrantClient(path=url.removeprefix("path:")), collection, dim)
    else:
        store = QdrantServerStore(QdrantClient(url=url, api_key=api_key), collection, dim)
    store.ensure_collection()
    return store
