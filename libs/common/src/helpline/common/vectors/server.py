"""The Qdrant server backend: a collection of a Qdrant server (`QdrantServerStore`).

The same class serves qdrant_client's local mode (in memory or in a folder), which the tests
use in place of a server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from qdrant_client import QdrantClient
from qdrant_client import models as qm

from helpline.common.lexical import SparseVector
from helpline.common.vectors.fusion import _prefetch_limit, fuse
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

__all__ = ["QdrantServerStore"]


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
        with store_span(
            "upsert", self.collection, remote=True, attributes=points_attributes(len(points))
        ):
            self.client.upsert(
                self.collection,
                points=[
                    qm.PointStruct(id=p.id, vector=self._vectors(p), payload=p.payload)
                    for p in points
                ],
                wait=True,
            )

    def delete(self, ids: Sequence[str]) -> None:
        """Remove points by id; unknown ids are ignored."""
        if not ids:
            return
        points: list[qm.ExtendedPointId] = list(ids)
        with store_span(
            "delete", self.collection, remote=True, attributes=points_attributes(len(points))
        ):
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
        brand: str | list[str] | None = None,
        sparse: SparseVector | None = None,
    ) -> list[Hit]:
        """The `limit` best points, only from `brand` when given; hybrid (RRF) with `sparse`."""
        hybrid = sparse is not None and bool(sparse.indices)
        with store_span(
            "search", self.collection, remote=True, attributes=search_attributes(limit, hybrid)
        ):
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
        with store_span("scroll", self.collection, remote=True):
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
                    note_rows(len(hashes))
                    return hashes
                offset = next_offset

    def ids_of_brand(self, brand: str) -> list[str]:
        """The id of every point of `brand` (to delete a brand whole)."""
        ids: list[str] = []
        offset: qm.ExtendedPointId | None = None
        with store_span("scroll", self.collection, remote=True):
            while True:
                records, next_offset = self.client.scroll(
                    self.collection,
                    scroll_filter=_server_filter(brand=brand),
                    limit=_SCROLL_PAGE,
                    offset=offset,
                    with_payload=False,
                )
                ids += [str(record.id) for record in records]
                if next_offset is None:
                    note_rows(len(ids))
                    return ids
                offset = next_offset

    def count(self, brand: str | None = None) -> int:
        """The exact number of points, only of `brand` when given."""
        result = self.client.count(
            self.collection, count_filter=_server_filter(brand=brand), exact=True
        )
        return result.count

    def export_points(self, page: int = _SCROLL_PAGE) -> Iterator[IndexedPoint]:
        """Every point with its dense and sparse vectors and payload, `page` at a time."""
        offset: qm.ExtendedPointId | None = None
        while True:
            records, offset = self.client.scroll(
                self.collection, limit=page, offset=offset, with_payload=True, with_vectors=True
            )
            for record in records:
                vectors = record.vector if isinstance(record.vector, dict) else {"": record.vector}
                dense = vectors.get("")
                if not isinstance(dense, list):
                    dense = []  # a dense vector is a flat list of floats
                named = vectors.get(SPARSE_VECTOR)
                sparse = (
                    SparseVector(list(named.indices), list(named.values))
                    if isinstance(named, qm.SparseVector)
                    else None
                )
                values = [float(v) for v in dense if isinstance(v, int | float)]
                yield IndexedPoint(str(record.id), values, record.payload or {}, sparse)
            if offset is None:
                return

    def maintain(self) -> bool:
        """Nothing to do: a Qdrant server builds its indexes by itself."""
        return False

    def close(self) -> None:
        """Close the client (its connections, or local mode's storage)."""
        self.client.close()


def _server_filter(
    *, brand: str | list[str] | None = None, url: str | None = None
) -> qm.Filter | None:
    """Points of `brand` (a list: of any of them) and of `url`."""
    conditions: list[qm.Condition] = [
        qm.FieldCondition(
            key=key,
            match=qm.MatchAny(any=value) if isinstance(value, list) else qm.MatchValue(value=value),
        )
        for key, value in (("brand", brand), ("url", url))
        if value is not None
    ]
    return qm.Filter(must=conditions) if conditions else None
