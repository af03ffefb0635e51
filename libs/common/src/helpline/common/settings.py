"""Settings base: every setting is an environment variable prefixed `HELPLINE_`.

Only the `settings.py` modules read the environment; everything below receives values.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from helpline.common.subjects import Kind

#: Where the embedding model's CPU graph is built once and kept (`HELPLINE_MODEL_CACHE_DIR`).
DEFAULT_MODEL_CACHE = Path.home() / ".cache" / "helpline"


class HelplineSettings(BaseSettings):
    """What every process needs: where the bus is, where data lives, how to log."""

    model_config = SettingsConfigDict(env_prefix="HELPLINE_", extra="ignore")

    nats_url: str | None = Field(
        default=None,
        description="NATS server URL, or several comma-separated (a cluster's: the bus moves "
        "to another when its server goes); unset, `helpline up` starts its own nats-server.",
    )
    nats_user: str | None = Field(
        default=None, description="User this process authenticates to NATS as."
    )
    nats_password: SecretStr | None = Field(
        default=None, description="Its NATS password (never logged); deploy reads it from a Secret."
    )
    nats_tls_ca: Path | None = Field(
        default=None,
        description="CA certificate (PEM) that the NATS servers' TLS certificates are checked "
        "against, for `tls://` URLs; unset, the system's.",
    )
    bus_prefix: str = Field(
        default="helpline", description="Prefix of every subject, stream and bucket name."
    )
    data_dir: Path = Field(default=Path(".helpline"), description="Where local state is kept.")
    log_level: str = Field(default="INFO", description="Log level (DEBUG, INFO, WARNING...).")
    log_json: bool = Field(default=True, description="Structured JSON logs with trace ids.")
    metrics: bool = Field(
        default=True,
        description="Prometheus metrics (and, at the gateway, the request log behind the "
        "stats, slow-request and error views); off, nothing is counted.",
    )
    access_log: bool = Field(
        default=True, description="The gateway's one log line per request (`helpline.access`)."
    )
    http_host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    http_port: int = Field(
        default=8080, description="Port of the gateway, or a worker's health port."
    )
    ack_wait_s: float = Field(
        default=60.0, description="Seconds before an unacknowledged task is redelivered."
    )
    max_deliver: int = Field(
        default=4, description="Deliveries of a task before it is dead-lettered."
    )
    max_run_s: dict[str, float] = Field(
        default_factory=dict,
        description="Longest one delivery of a task may run, by kind, in seconds, over the "
        'defaults (JSON, e.g. {"scrape": 120}; defaults: query 60, scrape and crawl 300, '
        "embed 600, maintenance 1800, webhook 60). A task past it is stopped, retried, and "
        'dead-lettered on its last attempt with "ran longer than N s".',
    )

    @field_validator("max_run_s")
    @classmethod
    def _known_kinds(cls, value: dict[str, float]) -> dict[str, float]:
        kinds = {k.value for k in Kind}
        for kind, seconds in value.items():
            if kind not in kinds:
                raise ValueError(f"{kind!r} is not a task kind ({', '.join(sorted(kinds))})")
            if not seconds > 0:
                raise ValueError(f"{kind}: must be more than 0 seconds")
        return value

    backoff_base_s: float = Field(
        default=1.0, description="First retry delay; doubles each attempt."
    )
    backoff_cap_s: float = Field(default=30.0, description="Longest retry delay.")
    stream_max_msgs: int = Field(
        default=1_000_000, description="Per-kind stream limit; beyond it submits are refused."
    )
    bulk_concurrency: int = Field(
        default=2,
        ge=1,
        description="Of each pool's slots, how many low and bulk (batch) work may hold.",
    )
    bulk_yield_window_s: float = Field(
        default=1.0,
        ge=0,
        description="While critical or high work started in a process within this many "
        "seconds, its low and bulk work yields to it (0: never).",
    )
    bulk_yield_starts_per_s: float = Field(
        default=5.0,
        gt=0,
        description="While batch work yields, how many low and bulk tasks each pool of the "
        "process still starts a second (its reserved share).",
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        description="On SIGTERM, how long in-flight tasks may finish before they are handed back.",
    )
    nats_sync_always: bool = Field(
        default=False,
        description="Embedded nats-server: fsync every write (safe against power loss, slower).",
    )
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Copies of every stream and bucket in a NATS cluster (3 in k8s).",
    )
    file_storage: bool = Field(
        default=True, description="Streams and KV on disk (false: in memory)."
    )
    task_record_ttl_s: float = Field(
        default=7 * 24 * 3600.0, description="How long task records are kept."
    )
    answer_cache_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long a cached answer is kept (the answers bucket's TTL, set when created).",
    )
    otel_service_name: str | None = Field(
        default=None,
        validation_alias="OTEL_SERVICE_NAME",
        description="Standard OpenTelemetry variable; overrides the service name in traces.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        ),
        description="Standard OpenTelemetry variable; set, spans are exported over OTLP/HTTP.",
    )
    otel_traces_sampler: str | None = Field(
        default=None,
        validation_alias="OTEL_TRACES_SAMPLER",
        description="Standard OpenTelemetry variable; set, it decides which spans are recorded "
        "(otherwise spans are recorded only when they are exported).",
    )
    trace_store: bool | None = Field(
        default=None,
        description="Keep recent traces on the bus (a bounded stream) for the gateway's trace "
        "view, `/traces/{trace_id}`; unset, on unless spans go to an OTLP endpoint.",
    )
    trace_store_ratio: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Of new traces, the share the trace store records and keeps (each whole "
        "or not at all; below 1, some requests have no trace to open).",
    )

    @property
    def trace_store_on(self) -> bool:
        """Whether this process adds its spans to the trace store."""
        return self.trace_store if self.trace_store is not None else not self.otlp_endpoint


class WebhookAddressSettings(BaseSettings):
    """Which receivers webhooks may reach (read at registration and at every delivery)."""

    model_config = SettingsConfigDict(env_prefix="HELPLINE_", extra="ignore")

    webhook_allowed_hosts: str | None = Field(
        default=None,
        description="Hosts or CIDRs webhook receivers may be at although not public "
        "(comma-separated); unset, HELPLINE_SCRAPER_ALLOWED_HOSTS.",
    )
    scraper_allowed_hosts: str = Field(
        default="",
        description="Hosts or CIDRs exempt from the public-address rule (comma-separated), e.g. 127.0.0.1.",
    )

    @property
    def webhook_allowed(self) -> str:
        """The allow list webhook receivers are checked against."""
        if self.webhook_allowed_hosts is not None:
            return self.webhook_allowed_hosts
        return self.scraper_allowed_hosts


class StoreSettings(BaseSettings):
    """The vector store and the embedding model, shared by the embedder and rag."""

    model_config = SettingsConfigDict(env_prefix="HELPLINE_", extra="ignore")

    qdrant_url: str | None = Field(
        default=None, description="Qdrant server URL; unset, Qdrant Edge runs in process."
    )
    qdrant_api_key: str | None = Field(default=None, description="Qdrant server API key.")
    collection: str = Field(default="helpline", description="Qdrant collection name.")
    embed_threads: int | None = Field(
        default=None, description="onnxruntime threads (default: all cores)."
    )
    query_threads: int = Field(
        default=1,
        ge=1,
        description="onnxruntime threads of the questions' model: one question runs fastest "
        "per CPU second on one (a second thread halves nothing at a dozen tokens, it spins).",
    )
    query_lanes: int = Field(
        default=2,
        ge=1,
        description="Calls of the questions' model that run at once: with one thread each, "
        "one lane keeps one core busy; questions that arrive while every lane is busy share "
        "the next free lane's call.",
    )
    query_int8: bool = Field(
        default=True,
        description="Embed questions with int8 matrix products on the CPU, as chunks are "
        "indexed, one question per model run so its vector never depends on who asks beside "
        "it: about 2.5-2.9 ms of CPU a question against 7-8 on the packaged graph (false), "
        "with the same answers within one question in twenty (bench/results/"
        "retrieval_eval.md).",
    )
    embed_batch_size: int = Field(default=32, description="Chunks per model call.")
    embed_batch_tokens: int = Field(
        default=2048,
        ge=1,
        description="Most padded tokens (texts x the longest one's tokens) in one model call: "
        "bounds its working memory however long the texts (at 256 tokens, 8 texts a call).",
    )
    embed_index_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description="How much lower the CPU priority of indexing's model threads is than the "
        "service's (nice; 0: the same): in one process with queries, indexing takes the cores "
        "only when questions do not need them.",
    )
    model_cache_dir: Path = Field(
        default=DEFAULT_MODEL_CACHE,
        description="Where the embedding model's CPU graph (int8 matrix products) is built once and kept.",
    )
    embed_providers: str = Field(
        default="CPUExecutionProvider",
        description="onnxruntime execution providers, preferred first (e.g. CUDAExecutionProvider,CPUExecutionProvider).",
    )
    breaker_store_failures: int = Field(
        default=3, description="Vector store failures that open its breaker."
    )
    breaker_store_open_s: float = Field(
        default=30.0, description="How long the vector store breaker stays open."
    )
