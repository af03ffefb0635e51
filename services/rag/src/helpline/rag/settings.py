"""Rag settings: the only module of the rag service that reads the environment."""

from __future__ import annotations

from pydantic import Field

from helpline.common.settings import HelplineSettings, StoreSettings


class RagSettings(HelplineSettings, StoreSettings):
    rag_concurrency: int = Field(default=10, description="Questions answered at once per replica.")
    rag_candidates: int = Field(
        default=4, description="Chunks retrieved per requested source (top_k x this)."
    )
