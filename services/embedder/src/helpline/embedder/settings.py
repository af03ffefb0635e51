"""Embedder settings: the only module of the embedder that reads the environment."""

from __future__ import annotations

from pydantic import Field

from helpline.common.settings import HelplineSettings, StoreSettings


class EmbedderSettings(HelplineSettings, StoreSettings):
    embedder_concurrency: int = Field(
        default=32,
        description="Pages (chunk batches) in hand at once per replica; their chunks share "
        "model calls, so this should hold several times HELPLINE_EMBED_POOL_CHUNKS / ~11.",
    )
    embed_pool_chunks: int = Field(
        default=256,
        ge=1,
        description="Most chunks, from as many pages as are waiting, embedded in one model "
        "call (on the int8 graph each chunk runs alone, HELPLINE_EMBED_THREADS at once; on "
        "the packaged graph sorted by length and run in batches of "
        "HELPLINE_EMBED_BATCH_SIZE texts and HELPLINE_EMBED_BATCH_TOKENS padded tokens).",
    )
    embed_index_int8: bool = Field(
        default=True,
        description="Index with int8 matrix products on the CPU, each chunk in a model run "
        "of its own (about 1.4-2x the chunks a second of the packaged graph in batches; "
        "vectors within cosine 0.99 of its; questions use the same graph by default, "
        "HELPLINE_QUERY_INT8).",
    )
    embed_pool_wait_ms: float = Field(
        default=50.0,
        ge=0,
        description="How long a free model waits for more pages to join a call that is not "
        "full yet.",
    )
