"""Every message on the bus, one pydantic model each; services import these, never redefine them."""

from __future__ import annotations

import hashlib
import os
import random
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from helpline.common.subjects import Kind, Priority


def utcnow() -> datetime:
    """Timezone-aware now, the only clock messages use."""
    return datetime.now(UTC)


# Seeded once from the OS: ids must be unique, not secret, and os.urandom costs a system
# call per id (tens of microseconds on some virtual machines, several per task).
_ids = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(16)))


def new_task_id() -> str:
    """A fresh random id: 32 hex digits, like a uuid4's."""
    return f"{_ids.getrandbits(128):032x}"


def derived_id(*parts: str) -> str:
    """A deterministic id from parts: the same inputs always name the same task or point."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TaskMessage(Message):
    """What every task carries: its id (also the Nats-Msg-Id), priority and deadline."""

    task_id: str
    priority: Priority = Priority.NORMAL
    deadline: datetime | None = None
    parent_id: str | None = None
    # When it was submitted, for a task whose record is written from its outcome (a query).
    created_at: datetime | None = None
    # A subject (core NATS) that also gets the task's outcome event, for a caller waiting
    # on it (`TaskStore.run`).
    notify: str | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.deadline is not None and (now or utcnow()) >= self.deadline

    def reported_as(self, kind: Kind) -> tuple[str, Kind]:
        """Which task this message's events describe (itself, unless it is a step of another)."""
        return self.task_id, kind


class CrawlScope(Message):
    """The limits a crawl's pages inherit from their parent."""

    root_url: str
    max_pages: int = 100
    max_depth: int = 3
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class BatchLimits(Message):
    """How a batch's pages may be fetched, across every scraper replica together."""

    max_concurrent: int = 5
    delay_ms: int = 0


class RenderMode(StrEnum):
    """Whether a page goes through the browser: `auto` renders only thin pages with scripts."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class ScrapeTask(TaskMessage):
    """Fetch one page, extract and chunk it, hand the chunks to the embedder."""

    url: str
    brand: str
    depth: int = 0
    crawl: CrawlScope | None = None
    batch: BatchLimits | None = None
    render: RenderMode = RenderMode.AUTO


class CrawlTask(TaskMessage):
    """A crawl's parent task: it seeds the first page; pages discover the rest."""

    url: str
    brand: str
    scope: CrawlScope
    render: RenderMode = RenderMode.AUTO


class Chunk(Message):
    text: str
    position: int
    heading: str = ""
    content_hash: str
    # The PDF page (1-based) the chunk is printed on; sources cite it as `url#page=N`.
    page: int | None = None


class LineageStep(Message):
    """One step of how a page's indexed version came to be (`LINEAGE`), by which task."""

    step: str
    at: datetime  # when it started
    duration_ms: float
    task_id: str
    trace_id: str | None = None


#: A page's steps, in order: the scraper's three, then the embedder's two.
LINEAGE = ("fetched", "extracted", "chunked", "embedded", "indexed")


class PageState(Message):
    """What the scraper remembers of an indexed page, for the next re-scrape (conditional GET)."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    chunks: int = 0
    title: str = ""
    # Kept for crawl pages only (None: not kept), so a 304 still leads to the linked pages.
    links: list[str] | None = None
    # Written by the embedder when the page's chunks are indexed (the documents listing).
    brand: str | None = None
    fetched_at: datetime | None = None
    indexed_at: datetime | None = None
    task_id: str | None = None  # the scrape that indexed this version
    # How the indexed version came to be (`LINEAGE`'s steps that ran).
    lineage: list[LineageStep] = Field(default_factory=list)
    # Re-crawls in a row that missed the page (gone, or no longer linked): removed at two.
    misses: int = 0
    # The crawl that last reached the page (a source's sweep counts a miss for the others).
    seen_by: str | None = None
    # The crawl whose sweep last counted a miss (a sweep done twice counts it once).
    missed_by: str | None = None
    # When the page's indexed chunks last changed (a re-crawl that embedded nothing keeps it).
    changed_at: datetime | None = None
    # The indexed version's content: sha256 over its chunks' hashes in order (`chunking.content_hash`).
    content_hash: str | None = None


class RemovalReason(StrEnum):
    """Why a page left the index (`page.removed`'s `reason`)."""

    DELETED = "deleted"  # DELETE /documents/{id}
    SOURCE_DELETED = "source_deleted"  # its source deleted with its pages
    BRAND_DELETED = "brand_deleted"  # its brand taken out whole
    MISSED = "missed"  # two re-crawls of its source in a row did not reach it
    GONE = "gone"  # it answered 404 or 410


class PageRemoval(Message):
    """What a removal batch takes out and why; its task record keeps it for the
    announcement of the outcome (`page.removed`)."""

    url: str
    brand: str | None = None
    reason: RemovalReason
    source_id: str | None = None


class ChunkBatch(TaskMessage):
    """Chunks of one document to embed and index; the embedder reports on `report_task_id`.

    With `page_key`, the embedder stores `page_state` under it in the `pages` bucket once the
    chunks are indexed (or deletes the key when `page_state` is None: the page is gone).
    """

    url: str
    title: str
    brand: str
    chunks: list[Chunk]
    fetched_at: datetime
    report_task_id: str
    report_kind: Kind = Kind.SCRAPE
    page_key: str | None = None
    page_state: PageState | None = None
    # The page's text as Markdown, stored beside its state once the chunks are indexed.
    markdown: str | None = None
    # Delete every point of `brand` (its chunks must be empty): a brand taken out whole.
    drop_brand: bool = False
    # A page taken out (no chunks, no state) by whom and why; the embedder ignores it.
    removal: PageRemoval | None = None

    def reported_as(self, kind: Kind) -> tuple[str, Kind]:
        return self.report_task_id, self.report_kind


class QueryTask(TaskMessage):
    question: str
    brand: str | None = None
    #: Search only these brands (a brand-limited key's question that names none).
    brands: list[str] | None = None
    top_k: int = 5
    reply_to: str | None = None
    # Set by the gateway when answers are cached: rag stores its answer under this key.
    cache_key: str | None = None
    # The client reads the answer as it is generated: rag sends `AnswerPart`s to reply_to
    # (headers carry REPLY_PART_HEADER) before the final `Answer`.
    stream: bool = False


class Source(Message):
    url: str
    title: str
    snippet: str
    score: float
    brand: str | None = None
    # When the cited version of the page was fetched (None: text sent to /embed, or unknown).
    fetched_at: datetime | None = None


class Answer(Message):
    task_id: str
    answer: str
    sources: list[Source]
    duration_ms: float = 0.0
    error: str | None = None
    # "llm" (generated from the sources) or "extractive" (sentences quoted from them).
    answer_mode: str = "extractive"
    # Why a configured language model did not answer (the extractive answer stands in).
    fallback_reason: str | None = None


REPLY_PART_HEADER = "Helpline-Reply-Part"


class AnswerPart(Message):
    """A piece of a streamed answer: the sources (first), then pieces of the text in order."""

    task_id: str
    sources: list[Source] | None = None
    text: str = ""


class MaintenanceTask(TaskMessage):
    job: str = "ping"
    params: dict[str, Any] = Field(default_factory=dict)


class WebhookTask(TaskMessage):
    """One event for one webhook, delivered signed (`webhooks`); the same `message_id` (its
    `webhook-id` header) and body on every attempt. The secret is read at delivery, never
    carried on the bus."""

    webhook_id: str
    message_id: str
    event: str
    body: str
    brand: str | None = None


class EventType(StrEnum):
    CREATED = "created"
    STARTED = "started"
    PROGRESSED = "progressed"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    # A parent's progress fell behind its ledger (found by maintenance): count it again.
    RECOUNT = "recount"

    @property
    def outcome(self) -> bool:
        """Whether this event ends the task (its record becomes terminal)."""
        return self in _OUTCOMES


_OUTCOMES = frozenset(
    {EventType.SUCCEEDED, EventType.FAILED, EventType.EXPIRED, EventType.CANCELLED}
)


class TaskError(Message):
    type: str
    message: str


class TaskEvent(Message):
    """A worker's report on a task; the gateway's tracker folds these into the task record."""

    event_id: str = Field(default_factory=new_task_id)
    task_id: str
    kind: Kind
    type: EventType
    at: datetime = Field(default_factory=utcnow)
    attempt: int = 0
    priority: Priority | None = None
    parent_id: str | None = None
    # For CREATED: what the new task is (e.g. a crawl's page); for SUCCEEDED: its result.
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    progress_done: int | None = None
    progress_total: int | None = None
    # When this attempt started and when the task was submitted, where known: a task that
    # reports only its outcome (a query) still gets a full record.
    started_at: datetime | None = None
    created_at: datetime | None = None
    # The trace the task runs in (32 hex digits), for the record and the views.
    trace_id: str | None = None
    # The process that sent it (`Host.replica_id`, as its heartbeat names it), for a worker's
    # events: the watchdog checks that the worker of a running task is still alive.
    replica: str | None = None


class DeadLetter(Message):
    """A task that will not be retried again, kept with what happened to it, for replay."""

    task_id: str
    kind: Kind
    priority: Priority | None = None
    attempts: int
    error: TaskError
    failed_at: datetime = Field(default_factory=utcnow)
    # The task message exactly as it was published (JSON text), so a replay sends it again.
    body: str
    trace_id: str | None = None


TASK_MODELS: dict[Kind, type[TaskMessage]] = {
    Kind.SCRAPE: ScrapeTask,
    Kind.CRAWL: CrawlTask,
    Kind.EMBED: ChunkBatch,
    Kind.QUERY: QueryTask,
    Kind.MAINTENANCE: MaintenanceTask,
    Kind.WEBHOOK: WebhookTask,
}
