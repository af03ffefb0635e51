"""Embedder settings: the only module of the embedder that reads the environment."""

from __future__ import annotations

from pydantic import Field

from helpline.common.settings import HelplineSettings, StoreSettings


class EmbedderSettings(HelplineSettings, StoreSettings):
    embedder_concurrency: int = Field(
        default=3, description="Chunk batches embedded at once per replica."
    )
