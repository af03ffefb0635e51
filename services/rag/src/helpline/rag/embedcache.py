"""Question embeddings kept in memory: a repeated question skips the model."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from helpline.common.answercache import normalise
from helpline.common.embedding import Embedder


class CachedQueryEmbedder(Embedder):
    """An `Embedder` of questions that remembers the last `size` of them (LRU).

    Keyed by the normalised question. In a batch (several questions embedded together,
    see `helpline.rag.batching`) each question is looked up on its own, and only the
    unknown ones go to the model, in one call.
    """

    def __init__(self, inner: Embedder, size: int) -> None:
        # Delegates to `inner`; the base class's session and tokenizer are never touched.
        self._inner = inner
        self._executor = None
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.size = size
        self._cache: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def providers(self) -> list[str]:
        return self._inner.providers

    def cached(self, question: str) -> npt.NDArray[np.float32] | None:
        """The question's vector (a copy) if it is cached, else None (the miss is counted
        when the question is embedded)."""
        return self._get(normalise(question)) if self.size else None

    def _get(self, key: str) -> npt.NDArray[np.float32] | None:
        with self._lock:
            vector = self._cache.get(key)
            if vector is None:
                return None
            self._cache.move_to_end(key)
            self.hits += 1
            return vector.copy()

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
        if self.size == 0:
            return self._inner.embed(texts, batch_size)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        unknown: list[int] = []
        for row, text in enumerate(texts):
            vector = self._get(normalise(text))
            if vector is None:
                unknown.append(row)
            else:
                out[row] = vector
        if unknown:
            vectors = self._inner.embed([texts[row] for row in unknown], batch_size)
            out[unknown] = vectors
            with self._lock:
                self.misses += len(unknown)
                for row, vector in zip(unknown, vectors, strict=True):
                    self._cache[normalise(texts[row])] = vector.copy()
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        return out
