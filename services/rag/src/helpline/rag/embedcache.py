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
    """An `Embedder` that remembers the last `size` single-question embeddings (LRU).

    Batches (several texts) go straight to the model; only the one-question calls the
    retrieval makes are cached, keyed by the normalised question.
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

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
        if len(texts) != 1 or self.size == 0:
            return self._inner.embed(texts, batch_size)
        key = normalise(texts[0])
        with self._lock:
            vector = self._cache.get(key)
            if vector is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return vector.copy()
            self.misses += 1
        vector = self._inner.embed(texts, batch_size)
        with self._lock:
            self._cache[key] = vector.copy()
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return vector
