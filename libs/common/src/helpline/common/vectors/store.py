"""What every vector store shares: the `VectorStore` interface and the values it takes and gives.

Points are chunks of documentation pages. Their payload carries at least `brand`, `url` and
`content_hash`, the three fields with keyword indexes (`INDEXED_FIELDS`). Each point has a
dense vector (the unnamed default, cosine) and a sparse lexical vector (`SPARSE_VECTOR`, with
Qdrant's IDF modifier; see `helpline.common.lexical`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from helpline.common.lexical import SparseVector
from helpline.common.observability import span

__all__ = [
    "INDEXED_FIELDS",
    "SPARSE_VECTOR",
    "Hit",
    "IndexedPoint",
    "MissingSparseVector",
    "VectorLike",
    "VectorStore",
    "point_id",
]

VectorLike = Sequence[float] | npt.NDArray[np.floating[Any]]

#: Payload fields filtered on, indexed as keywords before any point is written.
INDEXED_FIELDS = ("brand", "url", "content_hash")

#: Name of the sparse lexical vector; the dense vector is the unnamed default.
SPARSE_VECTOR = "lexical"

_SCROLL_PAGE = 256

_tracer = trace.get_tracer("helpline.vectors")


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
        brand: str | list[str] | None = None,
        sparse: SparseVector | None = None,
    ) -> list[Hit]:
        """The `limit` best points, only from `brand` when given (a list: any of them);
        hybrid (RRF) with `sparse`."""
        ...

    def hashes_for_url(self, url: str, brand: str) -> dict[str, str]:
        """Point id -> content_hash of every point stored for this page."""
        ...

    def ids_of_brand(self, brand: str) -> list[str]:
        """The id of every point of `brand` (to delete a brand whole)."""
        ...

    def count(self, brand: str | None = None) -> int:
        """The exact number of points, only of `brand` when given."""
        ...

    def export_points(self, page: int = _SCROLL_PAGE) -> Iterator[IndexedPoint]:
        """Every point with its dense and sparse vectors and payload (a backup's read),
        fetched `page` at a time."""
        ...

    def maintain(self) -> bool:
        """Housekeeping the store needs between writes; True when some was done."""
        ...

    def close(self) -> None:
        """Persist what is pending and release the store."""
        ...


def store_span(
    operation: str,
    collection: str,
    *,
    remote: bool,
    attributes: dict[str, AttributeValue] | None = None,
) -> AbstractContextManager[None]:
    """A store call's span (OpenTelemetry's database conventions): `search <collection>`."""
    return span(
        _tracer,
        f"{operation} {collection}",
        kind=SpanKind.CLIENT if remote else SpanKind.INTERNAL,
        attributes={
            "db.system.name": "qdrant",
            "db.operation.name": operation,
            "db.collection.name": collection,
            **(attributes or {}),
        },
    )


def points_attributes(points: int) -> dict[str, AttributeValue]:
    """A write's span attributes: how many points it carries."""
    return {"helpline.points": points}


def search_attributes(limit: int, hybrid: bool) -> dict[str, AttributeValue]:
    """A search's span attributes: the hits asked for, dense only or hybrid."""
    return {"helpline.search.limit": limit, "helpline.search.hybrid": hybrid}


def note_rows(rows: int) -> None:
    """How many points a store call returned (or wrote), on its span."""
    trace.get_current_span().set_attribute("db.response.returned_rows", rows)


def _as_list(vector: VectorLike, dim: int) -> list[float]:
    values: list[float] = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
    if len(values) != dim:
        raise ValueError(f"vector has {len(values)} dimensions, the store expects {dim}")
    return values
