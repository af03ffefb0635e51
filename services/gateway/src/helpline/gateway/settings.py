"""Gateway settings: the only module of the gateway that reads the environment."""

from __future__ import annotations

from pydantic import Field

from helpline.common.settings import HelplineSettings


class GatewaySettings(HelplineSettings):
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
