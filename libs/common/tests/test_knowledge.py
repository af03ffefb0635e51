"""Opening the model and the store from settings."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from helpline.common.knowledge import Knowledge
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
