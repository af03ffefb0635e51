"""Opening the model and the store from settings."""

from __future__ import annotations

import threading
from pathlib import Path

import onnxruntime as ort
import pytest
from qdrant_client import QdrantClient

from helpline.common.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from helpline.common.errors import Retryable
from helpline.common.knowledge import Knowledge, guarded
from helpline.common.settings import StoreSettings
from helpline.common.vectors import EdgeStore, QdrantServerStore


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_providers_setting_is_honoured_and_falls_back_to_cpu(tmp_path: Path) -> None:
    settings = StoreSettings(
        embed_providers="CUDAExecutionProvider, CPUExecutionProvider",
        qdrant_url=":memory:",
        embed_threads=1,
    )
    knowledge = Knowledge.open(settings, tmp_path)
    try:
        assert isinstance(knowledge.store, QdrantServerStore)
        providers = knowledge.model.providers
        assert providers[-1] == "CPUExecutionProvider"
        expected_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        assert ("CUDAExecutionProvider" in providers) is expected_cuda
        assert knowledge.model.embed(["reset the router"]).shape == (1, knowledge.model.dim)
    finally:
        knowledge.close()


def test_default_is_qdrant_edge_under_the_data_dir(tmp_path: Path) -> None:
    knowledge = Knowledge.open(StoreSettings(embed_threads=1), tmp_path)
    try:
        assert isinstance(knowledge.store, EdgeStore)
        assert (tmp_path / "qdrant" / "helpline").is_dir()
    finally:
        knowledge.close()


async def test_guarded_calls_a_store_that_holds_the_gil_in_place(tmp_path: Path) -> None:
    """Edge's calls run on the loop's thread; a server's run in a worker thread."""
    breaker = CircuitBreaker("vector-store", BreakerPolicy(failures=2, open_s=1.0))
    loop_thread = threading.get_ident()
    edge = EdgeStore(tmp_path / "edge", dim=4)
    server = QdrantServerStore(QdrantClient(":memory:"), "helpline", dim=4)
    try:
        assert edge.holds_gil
        assert not server.holds_gil
        for store, in_place in ((edge, True), (server, False)):
            ran_on = await guarded(breaker, threading.get_ident, inline=store.holds_gil)
            assert (ran_on == loop_thread) is in_place
        # In place or not, a store's failure is retryable and counts against the breaker.
        with pytest.raises(Retryable):
            await guarded(breaker, _refuse, inline=True)
        with pytest.raises(Retryable):
            await guarded(breaker, _refuse, inline=False)
        assert breaker.state is BreakerState.OPEN
    finally:
        edge.close()
        server.close()


def _refuse() -> None:
    raise ConnectionError("connection refused")
