"""The embedding model and the vector store, opened together.

The embedder writes and rag reads the same collection. In one process (`helpline up`)
both share one `Knowledge`, since Qdrant Edge is a single in-process engine; as separate
processes each opens its own, against a Qdrant server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from helpline.common.embedding import Embedder
from helpline.common.settings import StoreSettings
from helpline.common.vectors import VectorStore, open_store


@dataclass
class Knowledge:
    model: Embedder
    store: VectorStore

    @classmethod
    def open(cls, settings: StoreSettings, data_dir: Path) -> Knowledge:
        """Load the model, open (and prepare) the store the settings name."""
        providers = [p.strip() for p in settings.embed_providers.split(",") if p.strip()]
        model = Embedder.load(threads=settings.embed_threads, providers=providers)
        store = open_store(
            url=settings.qdrant_url,
            data_dir=data_dir,
            collection=settings.collection,
            dim=model.dim,
            api_key=settings.qdrant_api_key,
        )
        return cls(model=model, store=store)

    def close(self) -> None:
        self.store.close()
