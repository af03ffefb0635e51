"""The vector store: one interface over Qdrant Edge (in process) and a Qdrant server.

Points are chunks of documentation pages, each with a dense and a sparse lexical vector
(`store`). A search given both asks for the two rankings in one batch request and fuses them
with reciprocal-rank fusion (`fusion`), here rather than in Qdrant: the weak lexical hits are
cut first, which needs their scores. The backends are `edge.EdgeStore` and
`server.QdrantServerStore`; `open_store` picks one from a URL.

A collection created before hybrid retrieval has no sparse vector; opening it raises
`MissingSparseVector`, which says how to re-create it (delete it, then re-crawl).
"""

from __future__ import annotations

from pathlib import Path

from qdrant_client import QdrantClient

from helpline.common.vectors.edge import EdgeStore
from helpline.common.vectors.fusion import LEXICAL_CUT, LEXICAL_WEIGHT, RRF_K, fuse, fuse_ids, rrf
from helpline.common.vectors.server import QdrantServerStore
from helpline.common.vectors.store import (
    INDEXED_FIELDS,
    SPARSE_VECTOR,
    Hit,
    IndexedPoint,
    MissingSparseVector,
    VectorLike,
    VectorStore,
    point_id,
)

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
