"""The Qdrant Edge backend: a shard in a local folder, searched in process (`EdgeStore`).

Qdrant Edge builds its vector index and flushes to disk only when asked; `EdgeStore.maintain`
does both, so that questions are not held behind them: flushes in lulls of searches, and the
index built in a child process on a copy of the shard, which is then swapped in.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import qdrant_edge as edge

from helpline.common.lexical import SparseVector
from helpline.common.processes import start_child, stop_process
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
    note_rows,
    points_attributes,
    search_attributes,
    store_span,
)

__all__ = ["EdgeStore"]

#: Threads of an Edge shard's search pool (see `EdgeStore`).
SEARCH_THREADS = 1
#: Qdrant Edge builds its vector index only when asked (`EdgeStore.maintain`).
OPTIMIZE_AFTER_POINTS = 2_000
OPTIMIZE_QUIET_S = 20.0
#: Housekeeping holds the interpreter lock a questioner needs (a flush for 8-60 ms, swapping
#: in a rebuilt shard for the 0.1-0.3 s its load takes), so it waits until no search ran for
#: this long ...
SEARCH_LULL_S = 1.0
#: ... but a flush waits at most this long past its due time, and a swap this long past the
#: end of its rebuild, however busy the searches.
FLUSH_MAX_DEFER_S = 30.0
OPTIMIZE_MAX_DEFER_S = 120.0
#: A rebuild that failed is tried again this much later at the earliest.
OPTIMIZE_RETRY_S = 60.0
#: How much lower the rebuilding child's CPU priority is (nice): questions keep the cores.
OPTIMIZE_NICENESS = 10
#: Edge's optimize holds the interpreter lock for its whole run (1.9-3.5 s at 13k points: no
#: thread of the process runs meanwhile), so it runs in a child process, on a copy.
_OPTIMIZE = """
import os, sys
import qdrant_edge
os.nice(int(sys.argv[2]))
shard = qdrant_edge.EdgeShard.load(sys.argv[1])
optimized = shard.optimize()
shard.close()
sys.exit(0 if optimized else 3)
"""
_NOTHING_TO_OPTIMIZE = 3

log = logging.getLogger(__name__)


class EdgeStore(VectorStore):
    """A Qdrant Edge shard in a local folder, used in process.

    Safe to share between threads: the binding holds the GIL for the whole of every call,
    so calls run one at a time (checked with concurrent upserts, queries, scrolls and
    flushes); `_shard_lock` only keeps them off a shard being swapped out.

    Only one process may open a folder at a time: the WAL is locked while it is open.
    Writes are flushed by `maintain`, at most every `flush_interval` seconds.
    """

    holds_gil = True

    def __init__(self, path: Path, dim: int, *, flush_interval: float = 5.0) -> None:
        self.path = path
        self.dim = dim
        self._flush_interval = flush_interval
        self._flush_lock = threading.Lock()
        self._shard_lock = threading.Lock()
        self._config = config = edge.EdgeConfig(
            vectors=edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine),
            sparse_vectors={SPARSE_VECTOR: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)},
            # The binding holds the GIL for a whole call, so a search never overlaps the
            # process's other work anyway; handing its one or two segments to a pool of
            # threads only adds the hand-offs (0.9 -> 0.7 ms a hybrid search at 13k points).
            max_search_threads=SEARCH_THREADS,
        )
        _recover(path)
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
        # Points written since the last optimize; for a loaded shard, its dense vectors
        # outside the vector index (Edge counts every sparse vector as indexed).
        info = self._shard.info()
        sparse = edge.Filter(must=[edge.HasVectorCondition(SPARSE_VECTOR)])
        with_sparse = self._shard.count(edge.CountRequest(exact=True, filter=sparse))
        self._unindexed = max(0, info.points_count + with_sparse - info.indexed_vectors_count)
        self._written_at = 0.0
        self._rebuild: _Rebuild | None = None
        self._retry_at = 0.0  # after a failed rebuild, not before

    def ensure_collection(self) -> None:
        """Create the keyword payload indexes the shard does not have yet."""
        present = self._shard.info().payload_schema
        for field in INDEXED_FIELDS:
            if field not in present:
                self._update(
                    edge.UpdateOperation.create_field_index(field, edge.PayloadSchemaType.Keyword)
                )
        self._flush_now()

    def upsert(self, points: Sequence[IndexedPoint]) -> None:
        """Insert points, replacing any stored under the same id."""
        if not points:
            return
        with store_span(
            "upsert", self.path.name, remote=False, attributes=points_attributes(len(points))
        ):
            batch = [edge.Point(p.id, self._vectors(p), p.payload) for p in points]
            self._update(edge.UpdateOperation.upsert_points(batch))
            self._unindexed += len(batch)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove points by id; unknown ids are ignored."""
        if not ids:
            return
        with store_span(
            "delete", self.path.name, remote=False, attributes=points_attributes(len(ids))
        ):
            self._update(edge.UpdateOperation.delete_points(list(ids)))

    def _vectors(self, point: IndexedPoint) -> dict[str, edge.NamedVector]:
        vectors: dict[str, edge.NamedVector] = {"": _as_list(point.vector, self.dim)}
        if point.sparse is not None and point.sparse.indices:
            vectors[SPARSE_VECTOR] = edge.SparseVector(point.sparse.indices, point.sparse.values)
        return vectors

    def search(
        self,
        vector: VectorLike,
        limit: int,
        brand: str | list[str] | None = None,
        sparse: SparseVector | None = None,
    ) -> list[Hit]:
        """The `limit` best points, only from `brand` when given; hybrid (RRF) with `sparse`."""
        hybrid = sparse is not None and bool(sparse.indices)
        with store_span(
            "search", self.path.name, remote=False, attributes=search_attributes(limit, hybrid)
        ):
            self._searched_at = time.monotonic()
            with self._shard_lock:
                hits = self._search(vector, limit, brand, sparse)
            note_rows(len(hits))
            return hits

    def _search(
        self,
        vector: VectorLike,
        limit: int,
        brand: str | list[str] | None,
        sparse: SparseVector | None,
    ) -> list[Hit]:
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
        with store_span("scroll", self.path.name, remote=False):
            while True:
                with self._shard_lock:
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
                    note_rows(len(hashes))
                    return hashes

    def ids_of_brand(self, brand: str) -> list[str]:
        """The id of every point of `brand` (to delete a brand whole)."""
        ids: list[str] = []
        offset: edge.PointId | None = None
        with store_span("scroll", self.path.name, remote=False):
            while True:
                with self._shard_lock:
                    records, offset = self._shard.scroll(
                        edge.ScrollRequest(
                            offset=offset,
                            limit=_SCROLL_PAGE,
                            filter=_edge_filter(brand=brand),
                            with_payload=False,
                        )
                    )
                ids += [str(record.id) for record in records]
                if offset is None:
                    note_rows(len(ids))
                    return ids

    def count(self, brand: str | None = None) -> int:
        """The exact number of points, only of `brand` when given."""
        request = edge.CountRequest(exact=True, filter=_edge_filter(brand=brand))
        with self._shard_lock:
            return self._shard.count(request)

    def export_points(self, page: int = _SCROLL_PAGE) -> Iterator[IndexedPoint]:
        """Every point with its dense and sparse vectors and payload, `page` at a time."""
        offset: edge.PointId | None = None
        while True:
            with self._shard_lock:
                records, offset = self._shard.scroll(
                    edge.ScrollRequest(
                        offset=offset, limit=page, with_payload=True, with_vector=True
                    )
                )
            for record in records:
                dense, sparse = _split_vector(record.vector)
                yield IndexedPoint(str(record.id), dense, record.payload or {}, sparse)
            if offset is None:
                return

    def close(self) -> None:
        """Flush to disk (Edge's close does) and release the folder; closing twice is harmless."""
        with self._flush_lock:
            if self._closed:
                return
            self._drop_rebuild()
            self._shard.close()
            self._closed = True

    def maintain(self) -> bool:
        """Housekeeping, called periodically by the writer: build the vector index (HNSW)
        over what was written once writing has paused, and flush what is pending.

        Until an optimize, new points are searched exhaustively: 3 ms a query at 13k
        points, 0.6 ms once indexed. Once `OPTIMIZE_AFTER_POINTS` points are new and nothing
        was written for `OPTIMIZE_QUIET_S` (after a crawl, not during one), the shard is
        copied and a child process optimizes the copy, while this one goes on searching the
        original. A later call swaps the optimized copy in, unless anything was written
        since it was taken (then it is dropped, and made again once writing pauses). Swaps
        and flushes wait for a lull in searches (`SEARCH_LULL_S`), so that questions being
        asked are not held behind them, up to their `*_MAX_DEFER_S`. Returns whether it
        swapped in an optimized shard.
        """
        now = time.monotonic()
        lull = now - self._searched_at >= SEARCH_LULL_S
        swapped = False
        if self._rebuild is not None:
            swapped = self._finish_rebuild(now, lull)
        elif (
            self._unindexed >= OPTIMIZE_AFTER_POINTS
            and now - self._written_at >= OPTIMIZE_QUIET_S
            and now >= self._retry_at
        ):
            self._start_rebuild()
        due = now - self._flushed_at - self._flush_interval
        pending = self._writes != self._flushed_writes
        if pending and due >= 0 and (lull or due >= FLUSH_MAX_DEFER_S):
            self._flush_now()
        return swapped

    def _start_rebuild(self) -> None:
        """Copy the shard (flushed, no write in between) and start optimizing the copy."""
        copy = _sibling(self.path, "optimizing")
        with self._flush_lock:
            if self._closed:
                return
            self._flush_locked()
            with self._shard_lock:  # no write half done
                writes = self._writes
            shutil.rmtree(copy, ignore_errors=True)
            # Searches go on meanwhile; a write would tear the copy, which is then dropped.
            shutil.copytree(self.path, copy)
            with self._shard_lock:
                torn = self._writes != writes
            if torn:
                shutil.rmtree(copy, ignore_errors=True)
                return
            process = start_child(
                [sys.executable, "-c", _OPTIMIZE, str(copy), str(OPTIMIZE_NICENESS)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            self._rebuild = _Rebuild(copy, process, writes, self._unindexed, time.monotonic())

    def _finish_rebuild(self, now: float, lull: bool) -> bool:
        rebuild = self._rebuild
        assert rebuild is not None
        code = rebuild.process.poll()
        if code is None:
            return False
        if rebuild.done_at is None:
            rebuild.done_at = now
        stale = self._writes != rebuild.writes
        if code != 0 or stale:
            failed = code not in (0, _NOTHING_TO_OPTIMIZE)
            error = rebuild.error() if failed else ""
            with self._flush_lock:
                self._drop_rebuild()
            if code == _NOTHING_TO_OPTIMIZE and not stale:
                self._unindexed = 0  # what is left is too small for Edge to index
            elif failed:
                log.warning("optimizing the vector index failed: %s", error)
                self._retry_at = now + OPTIMIZE_RETRY_S
            return False
        if not lull and now - rebuild.done_at < OPTIMIZE_MAX_DEFER_S:
            return False
        return self._swap(rebuild)

    def _swap(self, rebuild: _Rebuild) -> bool:
        """Put the optimized copy where the shard was and load it in its place."""
        retired = _sibling(self.path, "retired")
        with self._flush_lock, self._shard_lock:
            if self._closed or self._writes != rebuild.writes:
                self._drop_rebuild()
                return False
            self._rebuild = None
            rebuild.close()
            swap_started = time.monotonic()
            self._shard.close()
            self.path.rename(retired)
            rebuild.path.rename(self.path)
            # A crash from here on leaves the copy in place, or `_recover` puts back the
            # original: both hold every point, since nothing was written in between.
            try:
                self._shard = edge.EdgeShard.load(str(self.path), self._config)
            except Exception:
                self.path.rename(rebuild.path)
                retired.rename(self.path)
                self._shard = edge.EdgeShard.load(str(self.path), self._config)
                shutil.rmtree(rebuild.path, ignore_errors=True)
                raise
            self._flushed_at = time.monotonic()
            self._unindexed = max(0, self._unindexed - rebuild.unindexed)
        swap_s = time.monotonic() - swap_started
        shutil.rmtree(retired, ignore_errors=True)
        log.info(
            "vector index optimized (%d new points) in a child process in %.1f s; swapped in %.0f ms",
            rebuild.unindexed,
            swap_started - rebuild.started_at,
            swap_s * 1000,
        )
        return True

    def _drop_rebuild(self) -> None:
        """Stop and remove an unfinished or unusable rebuild (holding `_flush_lock`)."""
        rebuild, self._rebuild = self._rebuild, None
        if rebuild is not None:
            stop_process(rebuild.process, 5.0)
            rebuild.close()
            shutil.rmtree(rebuild.path, ignore_errors=True)

    def _update(self, operation: edge.UpdateOperation) -> None:
        # Appended to the WAL (an mmap): it survives the process being killed, load() replays
        # it. A flush (8-60 ms, much of it holding the GIL) guards against an OS crash and
        # keeps that replay short; it runs every few seconds from `maintain`, like a Qdrant
        # server's flush_interval_sec, not in a write a question may be waiting behind.
        with self._shard_lock:
            self._shard.update(operation)
            self._writes += 1
        self._written_at = time.monotonic()

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


def _edge_filter(
    *, brand: str | list[str] | None = None, url: str | None = None
) -> edge.Filter | None:
    """Points of `brand` (a list: of any of them) and of `url`."""
    conditions: list[edge.ConditionType] = [
        edge.FieldCondition(
            key,
            match=edge.MatchAny(value) if isinstance(value, list) else edge.MatchValue(value),
        )
        for key, value in (("brand", brand), ("url", url))
        if value is not None
    ]
    return edge.Filter(must=conditions) if conditions else None


def _split_vector(vector: object) -> tuple[list[float], SparseVector | None]:
    """A record's vectors as Edge gives them (the dense list alone, or a dict of named ones)."""
    if not isinstance(vector, dict):
        return list(vector or []), None  # type: ignore[call-overload]
    named = vector.get(SPARSE_VECTOR)
    sparse = None if named is None else SparseVector(list(named.indices), list(named.values))
    return list(vector.get("", [])), sparse


@dataclass
class _Rebuild:
    """A copy of the shard (`path`) being optimized by a child process."""

    path: Path
    process: subprocess.Popen[bytes]
    writes: int  # the store's writes when the copy was taken
    unindexed: int
    started_at: float
    done_at: float | None = None

    def error(self) -> str:
        stderr = self.process.stderr.read() if self.process.stderr is not None else b""
        lines = stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {self.process.returncode}"

    def close(self) -> None:
        if self.process.stderr is not None:
            self.process.stderr.close()


def _sibling(path: Path, role: str) -> Path:
    return path.with_name(f"{path.name}.{role}")


def _recover(path: Path) -> None:
    """Finish or undo a swap that a crash interrupted, and drop an unfinished rebuild."""
    retired = _sibling(path, "retired")
    if retired.is_dir():
        if path.is_dir() and any(path.iterdir()):
            shutil.rmtree(retired)  # the optimized copy is in place
        else:
            with contextlib.suppress(FileNotFoundError):
                path.rmdir()
            retired.rename(path)
    shutil.rmtree(_sibling(path, "optimizing"), ignore_errors=True)
