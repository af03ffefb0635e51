"""Rag settings: the only module of the rag service that reads the environment."""

from __future__ import annotations

from pydantic import Field, SecretStr

from helpline.common.settings import HelplineSettings, StoreSettings


class RagSettings(HelplineSettings, StoreSettings):
    rag_concurrency: int = Field(default=10, description="Questions answered at once per replica.")
    rag_candidates: int = Field(
        default=4, description="Chunks retrieved per requested source (top_k x this)."
    )
    rag_embedding_cache: int = Field(
        default=2048, ge=0, description="Question embeddings kept in memory per replica (LRU)."
    )
    llm_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible API base (e.g. https://api.openai.com/v1); unset, answers are extractive.",
    )
    llm_model: str | None = Field(
        default=None, description="Model name sent to the chat completions endpoint."
    )
    llm_api_key: SecretStr | None = Field(
        default=None, description="Bearer token for the language model endpoint."
    )
    llm_timeout_s: float = Field(
        default=8.0, gt=0, description="Longest wait for a generated answer before falling back."
    )
    llm_max_tokens: int = Field(default=400, ge=16, description="Longest generated answer.")
    llm_breaker_failures: int = Field(
        default=5, ge=1, description="Language model failures that open its breaker."
    )
    llm_breaker_open_s: float = Field(
        default=60.0, gt=0, description="How long the language model breaker stays open."
    )
