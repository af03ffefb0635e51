"""The REST contract: request and response bodies."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
)

from helpline.common.messages import Answer, RenderMode
from helpline.common.observability import current_trace_id
from helpline.common.subjects import Priority
from helpline.gateway.keys import ApiKey, Scope

Brand = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$"
    ),
]


#: An absolute http(s) URL with a host: a name (letters, digits, dots, dashes, or plain
#: Unicode as people paste it) or an IPv6 literal in brackets, an optional port, then a path,
#: query or fragment without whitespace or control characters; no user name or password. Checked by this one
#: expression, which the document states as the field's pattern, so that what it documents
#: and what it accepts are the same set (no `urlsplit`: a 10,000-URL batch is checked on
#: the gateway's event loop while questions wait). The scraper checks the address itself.
#: Spelled with explicit ASCII classes, not `\s`: Python's and JSON Schema's (ECMA-262)
#: whitespace differ (U+001C-U+001F, U+0085), and both must read the pattern alike.
_HTTP_URL = re.compile(
    r"[Hh][Tt][Tt][Pp][Ss]?://(?:[^\x00-\x20\x7f-\x9f/?#@:\[\]]+|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?(?:[/?#][^\x00-\x20\x7f-\x9f]*)?"
)
#: What may stand around a URL (a pasted line's newline and indentation): stripped.
_AROUND = " \t\n\r\f\v"


#: How the document describes a URL field. No `format: uri`: a path in plain Unicode is
#: accepted and percent-encoded when fetched.
URL_SCHEMA: dict[str, Any] = {
    # Whitespace around the URL (a pasted line's newline) is allowed and stripped.
    "pattern": r"^[ \t\n\r\f\v]*" + _HTTP_URL.pattern + r"[ \t\n\r\f\v]*$",
    "maxLength": 2048,
}
HttpUrlText = Annotated[str, Field(json_schema_extra=URL_SCHEMA)]


def check_http_url(value: str) -> str:
    """Only absolute http(s) URLs with a host, as `URL_SCHEMA` states them."""
    if len(value) > 2048:
        raise ValueError("must be at most 2048 characters")
    value = value.strip(_AROUND)
    if not _HTTP_URL.fullmatch(value):
        raise ValueError(
            "must be an absolute http or https URL with a host (no spaces or control characters, no user name)"
        )
    return value


def _whole_number(value: Any) -> Any:
    """JSON Schema's integer: 8 and 8.0, never true or "8" (pydantic's lax int takes both)."""
    if isinstance(value, bool | str):
        raise ValueError("must be a whole number")
    return value


#: A request body's integer, as JSON Schema means it.
Whole = Annotated[int, BeforeValidator(_whole_number)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


RENDER = Field(
    default=RenderMode.AUTO,
    description="Browser rendering: auto (only pages with scripts and little text), always, never.",
)


def _number(value: Any) -> Any:
    """JSON Schema's number: never true or "5" (pydantic's lax float takes both)."""
    if isinstance(value, bool | str):
        raise ValueError("must be a number")
    return value


#: Seconds from now after which the task is not run any more.
Deadline = Annotated[float, Field(gt=0, le=7 * 24 * 3600), BeforeValidator(_number)]
DEADLINE = Field(
    default=None,
    description="Seconds from now after which the task is not run any more (status expired).",
)


class PageBody(Body):
    url: str = Field(description="An absolute http(s) URL.", json_schema_extra=URL_SCHEMA)
    brand: Brand

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)


class CrawlRequest(PageBody):
    max_pages: Whole = Field(default=100, ge=1, le=10_000)
    max_depth: Whole = Field(default=3, ge=0, le=20)
    include: list[str] | None = Field(
        default=None, max_length=100, description="Path globs to follow."
    )
    exclude: list[str] | None = Field(
        default=None, max_length=100, description="Path globs to skip."
    )
    priority: Priority = Priority.NORMAL
    deadline_s: Deadline | None = DEADLINE
    render: RenderMode = RENDER


class ScrapeRequest(PageBody):
    priority: Priority = Priority.NORMAL
    deadline_s: Deadline | None = DEADLINE
    render: RenderMode = RENDER


class ScrapeBatchRequest(Body):
    urls: list[HttpUrlText] = Field(
        min_length=1, max_length=10_000, description="Pages to index, each a child task."
    )
    brand: Brand
    max_concurrent: Whole = Field(
        default=5, ge=1, le=100, description="Pages fetched at once, across replicas."
    )
    delay_ms: Whole = Field(
        default=0, ge=0, le=60_000, description="Least time between two fetches' starts."
    )
    priority: Priority = Priority.LOW
    deadline_s: Deadline | None = DEADLINE
    render: RenderMode = RENDER

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, values: list[str]) -> list[str]:
        checked = []
        for index, value in enumerate(values):
            try:
                checked.append(check_http_url(value))
            except ValueError as exc:
                raise ValueError(f"urls[{index}] {exc}") from None
        return checked


class EmbedDocument(Body):
    id: (
        Annotated[
            str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")
        ]
        | None
    ) = None
    title: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None
    url: HttpUrlText | None = Field(
        default=None, description="Where the text lives, if anywhere; cited as the source."
    )
    text: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=200_000, pattern=r"\S"),
    ]
    brand: Brand

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return check_http_url(value) if value is not None else None


class EmbedRequest(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "documents": [
                        {
                            "id": "faq-reset",
                            "title": "Resetting the router",
                            "text": "Hold the reset button for 12 seconds.",
                            "brand": "acme",
                        }
                    ]
                }
            ]
        },
    )

    documents: list[EmbedDocument] = Field(min_length=1, max_length=1000)
    priority: Priority = Priority.LOW
    deadline_s: Deadline | None = DEADLINE


class QueryRequest(Body):
    question: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000, pattern=r"\S")
    ]
    brand: Brand | None = None
    top_k: Whole = Field(default=5, ge=1, le=20)
    priority: Priority = Field(
        default=Priority.CRITICAL, description="A customer is waiting: critical."
    )
    cache: StrictBool = Field(
        default=True,
        description="false: neither read nor write the answer cache (a fresh answer).",
    )
    stream: StrictBool = Field(
        default=False,
        description="Answer as server-sent events (sources, delta..., done) instead of JSON.",
    )


class MaintenanceRequest(Body):
    priority: Priority = Priority.NORMAL
    delay_ms: Whole = Field(
        default=0, ge=0, le=60_000, description="Make the ping take this long (load tests)."
    )
    deadline_s: Deadline | None = DEADLINE


class Accepted(BaseModel):
    task_id: str
    status: str = "queued"
    status_url: str


class SourceOut(BaseModel):
    url: str
    title: str
    snippet: str
    score: float
    fetched_at: datetime | None = Field(
        default=None, description="When the cited version was fetched (null: not a web page)."
    )


class QueryResponse(BaseModel):
    answer: str
    sources: list[SourceOut]
    task_id: str
    duration_ms: float
    cached: bool = Field(description="Served from the answer cache.")
    answer_mode: str = Field(
        description="`llm` (generated from the sources) or `extractive` (quoted from them)."
    )
    fallback_reason: str | None = Field(
        default=None,
        description="Why the configured language model did not answer (the answer is extractive).",
    )
    trace_id: str | None = Field(
        default=None, description="The request's trace (also in the X-Trace-Id header)."
    )

    @classmethod
    def of(cls, answer: Answer, task_id: str, started: float, *, cached: bool) -> QueryResponse:
        """Rag's (or the cache's) answer as the client sees it; `started` is the request's
        `time.perf_counter()`."""
        return cls(
            answer=answer.answer,
            sources=[SourceOut.model_validate(s.model_dump()) for s in answer.sources],
            task_id=task_id,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            cached=cached,
            answer_mode=answer.answer_mode,
            fallback_reason=answer.fallback_reason,
            trace_id=current_trace_id(),
        )


class CacheStats(BaseModel):
    hits: int = Field(description="Answers this gateway replica served from the cache.")
    misses: int = Field(description="Questions this gateway replica found no cached answer for.")
    hit_rate: float
    entries: int = Field(description="Answers in the cache (every replica's).")
    bytes: int
    ttl_s: float


class CacheCleared(BaseModel):
    cleared: int


class ErrorBody(BaseModel):
    detail: str


class ReplayRequest(Body):
    priority: Priority = Field(
        default=Priority.LOW, description="Priority of the re-submitted task."
    )


class ReplayAccepted(Accepted):
    replay_of: str


class DeadLetterView(BaseModel):
    task_id: str
    kind: str
    priority: str | None
    attempts: int
    error: dict[str, str]
    failed_at: datetime
    trace_id: str | None = None
    task: dict[str, Any] | str = Field(
        description="The task as it was published (text if it was not JSON)."
    )


class BreakerView(BaseModel):
    name: str
    state: str
    consecutive_failures: int
    failure_threshold: int
    open_s: float
    times_opened: int
    retry_after_s: float


class ReplicaBreakers(BaseModel):
    replica: str
    services: list[str]
    at: datetime
    breakers: list[BreakerView]


class RouteStats(BaseModel):
    count: int
    errors: int = Field(description="Answered 5xx.")
    error_rate: float
    client_errors: int = Field(description="Answered 4xx.")
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    requests_per_minute: float


class RequestStats(BaseModel):
    overall: RouteStats
    routes: dict[str, RouteStats] = Field(description="By `METHOD /route/template`.")


class FieldError(BaseModel):
    field: str = Field(description="The field, dotted (`documents.0.text`); empty: the body.")
    location: str = Field(description="body, query, path or header.")
    message: str
    type: str


class ValidationErrorBody(BaseModel):
    """What a 422 says: every field that does not validate, and why."""

    detail: str
    errors: list[FieldError]


class KeyRequest(Body):
    name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"\S")
    ]
    scopes: list[Scope] = Field(min_length=1, description="query, submit, admin (all three).")
    brands: list[Brand] | None = Field(
        default=None,
        max_length=1000,
        description="The brands the key may use; null: every brand.",
    )
    rate_per_minute: (
        Annotated[int, Field(ge=0, le=1_000_000), BeforeValidator(_whole_number)] | None
    ) = Field(
        default=None,
        description="Requests a minute, shared by every gateway replica; null: the "
        "gateway's default (HELPLINE_DEFAULT_RATE_PER_MINUTE); 0: not limited.",
    )


class KeyView(BaseModel):
    id: str
    name: str
    scopes: list[Scope]
    brands: list[str] | None
    rate_per_minute: int | None
    created_at: datetime
    last_used_at: datetime | None = None

    @classmethod
    def of(cls, key: ApiKey, last_used: float | None = None) -> KeyView:
        return cls(
            id=key.id,
            name=key.name,
            scopes=key.scopes,
            brands=key.brands,
            rate_per_minute=key.rate_per_minute,
            created_at=key.created_at,
            last_used_at=datetime.fromtimestamp(last_used, UTC) if last_used else None,
        )


class KeyCreated(KeyView):
    key: str = Field(description="The key itself: shown this once, stored only hashed.")


class QueueView(BaseModel):
    kind: str
    priority: str
    pending: int = Field(description="Tasks waiting.")
    in_flight: int = Field(description="Delivered and not yet acknowledged.")
    redelivered: int
    oldest_age_s: float | None = Field(description="Age of the oldest waiting task.")


class WorkerView(BaseModel):
    service: str
    replicas: list[str]
    replica_count: int
    concurrency: int = Field(description="Tasks its replicas may run at once.")
    busy: int = Field(description="Tasks running now.")
    last_seen: str | None
    batch_yielding: bool = Field(description="Batch work holding back for questions.")
    batch_yielded_s: float


class OpenBreaker(BreakerView):
    replica: str


class SystemStatus(BaseModel):
    status: str = Field(description="ok, degraded (a breaker is open) or down (no streams).")
    bus: dict[str, Any] = Field(description="The connection: server, state, streams_present.")
    queues: list[QueueView]
    workers: list[WorkerView]
    open_breakers: list[OpenBreaker]
