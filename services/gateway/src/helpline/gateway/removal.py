"""Taking indexed pages out of the index: a document, a source's pages, a brand's.

The gateway holds no vector store (Qdrant Edge is one process's), so each page goes as an
empty chunk batch without a page state, at `high`: the embedder deletes the page's points,
its state and its text, and moves the brand's index generation before reporting, as for a
page that answers 404. The caller waits for the outcomes and reports what was removed. Each
batch names why (and the source, where one goes with it): the tracker announces `page.removed`
from the outcome, also for one still pending when the caller stops waiting.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from helpline.common.documents import Document, removal_batch, under
from helpline.common.messages import ChunkBatch, RemovalReason, new_task_id, utcnow
from helpline.common.records import Status
from helpline.common.sources import Source
from helpline.common.subjects import Kind, Priority
from helpline.gateway.tasks import Tasks

#: How long a removal is waited for before answering with what is still pending.
REMOVAL_WAIT_S = 30.0


@dataclass
class Removal:
    """What a removal took out of the index; `pending`: task ids not finished in time."""

    documents: int = 0
    chunks: int = 0
    task_ids: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


async def remove_documents(
    tasks: Tasks,
    documents: list[Document],
    wait_s: float = REMOVAL_WAIT_S,
    *,
    reason: RemovalReason = RemovalReason.DELETED,
    source: Source | None = None,
    sources: list[Source] | None = None,
) -> Removal:
    """Take `documents` out of the index and the answers; wait up to `wait_s` for it.
    `source`: theirs; `sources`: the one whose root holds each is its (found at announcement
    otherwise)."""

    def source_of(document: Document) -> str | None:
        if source is not None:
            return source.id
        url = document.state.url
        return next((s.id for s in sources or [] if under(s.url)(url)), None)

    batches = [removal_batch(d, reason=reason, source_id=source_of(d)) for d in documents]
    return await remove(tasks, batches, wait_s)


async def remove_brand(
    tasks: Tasks, brand: str, documents: list[Document], sources: list[Source]
) -> Removal:
    """Take `documents` (the brand's pages, of `sources` or none) out, then every other point of
    `brand` (text sent to /embed, pages without a state): each page counted as a document, the
    rest as chunks."""
    removal = await remove_documents(
        tasks, documents, reason=RemovalReason.BRAND_DELETED, sources=sources
    )
    task_id = new_task_id()
    rest = ChunkBatch(
        task_id=task_id,
        priority=Priority.HIGH,
        url="",
        title="",
        brand=brand,
        chunks=[],
        fetched_at=utcnow(),
        report_task_id=task_id,
        report_kind=Kind.EMBED,
        drop_brand=True,
    )
    others = await remove(tasks, [rest], REMOVAL_WAIT_S)
    return Removal(
        documents=removal.documents,
        chunks=removal.chunks + others.chunks,
        task_ids=removal.task_ids + others.task_ids,
        pending=removal.pending + others.pending,
        failed=removal.failed + others.failed,
    )


async def remove(tasks: Tasks, batches: list[ChunkBatch], wait_s: float) -> Removal:
    """Submit removal batches and wait up to `wait_s` for their outcomes."""
    removal = Removal()
    if not batches:
        return removal
    records = await tasks.store.submit_many(Kind.EMBED, batches)
    removal.task_ids = [r.task_id for r in records]
    waiting = set(removal.task_ids)
    deadline = time.monotonic() + wait_s
    while waiting:
        for task_id in list(waiting):
            record = await tasks.store.get(task_id)
            if record is None or not record.status.terminal:
                continue
            waiting.discard(task_id)
            if record.status is Status.SUCCEEDED:
                removal.documents += 1
                removal.chunks += int((record.result or {}).get("removed", 0))
            else:
                removal.failed.append(task_id)
        if not waiting or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    removal.pending = sorted(waiting)
    return removal
