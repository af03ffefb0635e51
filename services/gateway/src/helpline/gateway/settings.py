"""Gateway settings: the only module of the gateway that reads the environment."""

from __future__ import annotations

from pydantic import Field, SecretStr

from helpline.common.settings import HelplineSettings, WebhookAddressSettings


class GatewaySettings(HelplineSettings, WebhookAddressSettings):
    query_timeout_s: float = Field(
        default=10.0, description="How long a query may take before 504."
    )
    answer_cache: bool = Field(
        default=True,
        description="Serve repeated questions from the shared answer cache (see answer_cache_ttl_s).",
    )
    tracker_batch: int = Field(
        default=256, ge=1, le=1000, description="Most task events the tracker applies at once."
    )
    trace_ui_url: str | None = Field(
        default=None,
        description="A tracing UI (Jaeger's, e.g. http://jaeger:16686): set, every trace id in "
        "the slow-request and error views links to `<url>/trace/<id>`; unset, to the gateway's "
        "own trace page when the trace store is on.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="The bootstrap admin API key (every scope, every brand, no rate limit); "
        "`helpline up` makes one in the data dir when unset.",
    )
    default_rate_per_minute: int = Field(
        default=600, ge=0, description="Requests a minute for keys that set none (0: no limit)."
    )
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Largest request body; beyond it 413."
    )
    min_refresh_s: int = Field(
        default=300, ge=1, description="The shortest refresh_s a source may have."
    )
    backup_dir: str = Field(
        default="",
        description="Where `helpline up` writes live backups asked by POST /api/v1/admin/backup "
        "(read there too); empty: the route answers 409.",
    )
    stale_after_s: float = Field(
        default=86_400.0,
        gt=0,
        description="A cited page of no source older than this is scraped again (high, once).",
    )
    max_inflight_queries: int = Field(
        default=256, ge=1, description="Questions one replica waits on at once; beyond it 429."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (CORS); empty: none.",
    )
