"""Question embeddings are cached by normalised question, least recently used out first."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from helpline.common.embedding import Embedder
from helpline.rag.embedcache import CachedQueryEmbedder


class CountingModel(Embedder):
    def __init__(self) -> None:
        self.model_id = "counting"
        self.dim = 2
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
        self.calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_repeated_question_skips_the_model() -> None:
    inner = CountingModel()
    cached = CachedQueryEmbedder(inner, size=2)
    first = cached.embed(["How do I reset?"])
    again = cached.embed(["  how do i RESET "])
    assert np.array_equal(first, again)
    assert inner.calls == [["How do I reset?"]]
    assert (cached.hits, cached.misses) == (1, 1)


def test_least_recently_used_is_evicted() -> None:
    inner = CountingModel()
    cached = CachedQueryEmbedder(inner, size=2)
    for question in ("a1", "b1", "a1", "c1", "a1", "b1"):
        cached.embed([question])
    # b1 was evicted by c1 (a1 was used more recently), so it is embedded twice.
    assert [c[0] for c in inner.calls] == ["a1", "b1", "c1", "b1"]


def test_a_batch_of_questions_embeds_only_the_unknown_ones_in_one_call() -> None:
    inner = CountingModel()
    cached = CachedQueryEmbedder(inner, size=8)
    cached.embed(["known"])
    vectors = cached.embed(["x", "known", "yy"])
    assert inner.calls == [["known"], ["x", "yy"]]
    assert vectors.tolist() == [[1.0, 1.0], [5.0, 1.0], [2.0, 1.0]]
    again = cached.embed(["YY", "x "])
    assert inner.calls == [["known"], ["x", "yy"]]
    assert again.tolist() == [[2.0, 1.0], [1.0, 1.0]]
    assert (cached.hits, cached.misses) == (3, 3)
    assert cached.cached("KNOWN") is not None
    assert cached.cached("never asked") is None


def test_a_zero_size_cache_always_asks_the_model() -> None:
    inner = CountingModel()
    cached = CachedQueryEmbedder(inner, size=0)
    cached.embed(["a"])
    cached.embed(["a"])
    assert cached.cached("a") is None
    assert inner.calls == [["a"], ["a"]]
