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


def test_least_recently_used_is_evicted_and_batches_bypass() -> None:
    inner = CountingModel()
    cached = CachedQueryEmbedder(inner, size=2)
    for question in ("a1", "b1", "a1", "c1", "a1", "b1"):
        cached.embed([question])
    # b1 was evicted by c1 (a1 was used more recently), so it is embedded twice.
    assert [c[0] for c in inner.calls] == ["a1", "b1", "c1", "b1"]
    cached.embed(["x", "y"])
    cached.embed(["x", "y"])
    assert inner.calls[-2:] == [["x", "y"], ["x", "y"]]
