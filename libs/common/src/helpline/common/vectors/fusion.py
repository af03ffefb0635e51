"""Reciprocal-rank fusion (RRF) of a dense and a lexical ranking into one hybrid ranking.

Both stores fuse here rather than in Qdrant: the weak lexical hits are cut first
(`LEXICAL_CUT`), which needs their scores.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from helpline.common.observability import span
from helpline.common.vectors.store import Hit

__all__ = ["LEXICAL_CUT", "LEXICAL_WEIGHT", "RRF_K", "fuse", "fuse_ids", "rrf"]

K = TypeVar("K", bound=Hashable)

_tracer = trace.get_tracer("helpline.vectors")

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
    with span(_tracer, "rank fusion", kind=SpanKind.INTERNAL):
        floor = lexical[0][1] * LEXICAL_CUT if lexical else 0.0
        kept = [point for point, score in lexical if score >= floor]
        fused = _rrf_ids([[point for point, _ in dense], kept], limit, (1.0, LEXICAL_WEIGHT))
        current = trace.get_current_span()
        if current.is_recording():
            current.set_attributes(
                {
                    "helpline.fusion.dense": len(dense),
                    "helpline.fusion.lexical": len(lexical),
                    "helpline.fusion.lexical_kept": len(kept),
                    "helpline.fusion.fused": len(fused),
                }
            )
        return fused


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
