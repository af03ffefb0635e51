"""The embedding model and the vector store, opened together.

The embedder writes and rag reads the same collection. In one process (`helpline up`)
both share one `Knowledge`, since Qdrant Edge is a single in-process engine; as separate
processes each opens its own, against a Qdrant server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from helpline.common.breaker import BreakerBoard, BreakerPolicy, CircuitBreaker
from helpline.common.embedding import Embedder
from helpline.common.errors import HelplineError, Retryable
from helpline.common.settings import StoreSettings
from helpline.common.vectors import VectorStore, open_store

R = TypeVar("R")
STORE_BREAKER = "vector-store"


def store_breaker(board: BreakerBoard, settings: StoreSettings) -> CircuitBreaker:
    """The process's vector-store breaker, with the thresholds the settings give."""
    policy = BreakerPolicy(
        failures=settings.breaker_store_failures, open_s=settings.breaker_store_open_s
    )
    return board.get(STORE_BREAKER, policy)


async def guarded(
    breaker: CircuitBreaker, fn: Callable[..., R], *args: Any, inline: bool = False
) -> R:
    """Call the vector store through its breaker; its faults are retryable.

    Off the event loop, in a thread, unless `inline` (a store whose calls hold the GIL
    throughout, `VectorStore.holds_gil`): there a thread cannot overlap the call with the
    loop's work, and at 8 concurrent hybrid searches on Qdrant Edge the threads' hand-offs
    doubled the CPU a search costs (4.4-4.6 ms against 2.1-2.6 ms on this machine).
    """
    try:
        if inline:
            result: R = breaker.call(fn, *args)
        else:
            result = await asyncio.to_thread(breaker.call, fn, *args)
    except HelplineError:
        raise
    except Exception as exc:
        raise Retryable(f"vector store unavailable ({type(exc).__name__})") from exc
    return result


@dataclass
class Knowledge:
    model: Embedder
    store: VectorStore

    @classmethod
    def open(
        cls,
        settings: StoreSettings,
        data_dir: Path,
        *,
        niceness: int = 0,
        int8_products: bool = False,
        for_questions: bool = True,
    ) -> Knowledge:
        """Load the model, open (and prepare) the store the settings name.

        `for_questions`: the model embeds questions (`load_question_model`); otherwise it
        indexes, with `niceness` and `int8_products`.
        """
        model = (
            load_question_model(settings)
            if for_questions
            else load_model(settings, niceness=niceness, int8_products=int8_products)
        )
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
        self.model.close()


def load_model(
    settings: StoreSettings, *, niceness: int = 0, int8_products: bool = False
) -> Embedder:
    """The embedding model on the providers and threads the settings give; `int8_products`
    for a model that only indexes (see `embedding`)."""
    return Embedder.load(
        threads=settings.embed_threads,
        providers=_providers(settings),
        niceness=niceness,
        int8_products=int8_products,
        cache_dir=settings.model_cache_dir,
        batch_tokens=settings.embed_batch_tokens,
    )


def load_question_model(settings: StoreSettings) -> Embedder:
    """The model questions are embedded with: `query_threads` threads, and with `query_int8`
    (the default) int8 matrix products, one question per model run (see `embedding`)."""
    return Embedder.load(
        threads=settings.query_threads,
        providers=_providers(settings),
        int8_products=settings.query_int8,
        cache_dir=settings.model_cache_dir,
        batch_tokens=settings.embed_batch_tokens,
    )


def _providers(settings: StoreSettings) -> list[str]:
    return [p.strip() for p in settings.embed_providers.split(",") if p.strip()]
