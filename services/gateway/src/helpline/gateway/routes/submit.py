"""Submitting work: crawl, scrape, scrape a batch, embed documents, ping maintenance.

Each answers 202 with the task's id and where to follow it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from helpline.common.chunking import chunk_document, text_document
from helpline.common.messages import (
    BatchLimits,
    ChunkBatch,
    CrawlScope,
    CrawlTask,
    MaintenanceTask,
    ScrapeTask,
    TaskMessage,
    derived_id,
    utcnow,
)
from helpline.common.subjects import Kind
from helpline.gateway.auth import GUARDED, Caller, check_brand, requires
from helpline.gateway.keys import Scope
from helpline.gateway.routes.deps import (
    REFUSED,
    IdempotencyKey,
    TasksDep,
    accepted_response,
    deadline_after,
)
from helpline.gateway.schemas import (
    Accepted,
    CrawlRequest,
    EmbedDocument,
    EmbedRequest,
    MaintenanceRequest,
    ScrapeBatchRequest,
    ScrapeRequest,
)
from helpline.gateway.tasks import SLICE, task_id_for

T = TypeVar("T")
router = APIRouter(tags=["submit"], dependencies=[requires(Scope.SUBMIT)], responses={**GUARDED})
maintenance = APIRouter(
    tags=["maintenance"], dependencies=[requires(Scope.ADMIN)], responses={**GUARDED}
)


async def built(items: list[T], make: Callable[[T], TaskMessage]) -> list[TaskMessage]:
    """A batch's children, built a slice at a time between turns of the event loop (a
    10,000-page batch takes a fifth of a second of CPU to build)."""
    children: list[TaskMessage] = []
    for start in range(0, len(items), SLICE):
        children.extend(make(item) for item in items[start : start + SLICE])
        await asyncio.sleep(0)
    return children


@router.post("/crawl", status_code=202, response_model=Accepted, responses=REFUSED)
async def crawl(
    body: CrawlRequest,
    request: Request,
    tasks: TasksDep,
    caller: Caller,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """Crawl a documentation site: a parent task whose pages are child scrape tasks."""
    check_brand(caller, body.brand)
    scope = CrawlScope(
        root_url=body.url,
        max_pages=body.max_pages,
        max_depth=body.max_depth,
        include=body.include or [],
        exclude=body.exclude or [],
    )
    task = CrawlTask(
        task_id=task_id_for(Kind.CRAWL, key),
        priority=body.priority,
        deadline=deadline_after(body.deadline_s),
        url=body.url,
        brand=body.brand,
        scope=scope,
        render=body.render,
    )
    # Through `Tasks`: a crawl is listed as an open parent before it is published.
    record, _created = await tasks.submit(Kind.CRAWL, task, fresh=key is None)
    return accepted_response(request, record)


@router.post("/scrape", status_code=202, response_model=Accepted, responses=REFUSED)
async def scrape(
    body: ScrapeRequest,
    request: Request,
    tasks: TasksDep,
    caller: Caller,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """Scrape and index one page."""
    check_brand(caller, body.brand)
    task = ScrapeTask(
        task_id=task_id_for(Kind.SCRAPE, key),
        priority=body.priority,
        deadline=deadline_after(body.deadline_s),
        url=body.url,
        brand=body.brand,
        render=body.render,
    )
    record, _created = await tasks.store.submit(Kind.SCRAPE, task, fresh=key is None)
    return accepted_response(request, record)


@router.post("/scrape/batch", status_code=202, response_model=Accepted, responses=REFUSED)
async def scrape_batch(
    body: ScrapeBatchRequest,
    request: Request,
    tasks: TasksDep,
    caller: Caller,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """Index a list of pages: a parent task whose progress counts its URLs; `max_concurrent`
    and `delay_ms` hold across every scraper replica."""
    check_brand(caller, body.brand)
    parent_id = task_id_for(Kind.SCRAPE, key)
    deadline = deadline_after(body.deadline_s)
    limits = BatchLimits(max_concurrent=body.max_concurrent, delay_ms=body.delay_ms)
    children = await built(
        list(dict.fromkeys(body.urls)),
        lambda url: ScrapeTask(
            task_id=derived_id(parent_id, url),
            priority=body.priority,
            deadline=deadline,
            parent_id=parent_id,
            url=url,
            brand=body.brand,
            batch=limits,
            render=body.render,
        ),
    )
    record, _created = await tasks.submit_parent(
        Kind.SCRAPE, parent_id, body.priority, children, brand=body.brand
    )
    return accepted_response(request, record)


@router.post("/embed", status_code=202, response_model=Accepted, responses=REFUSED)
async def embed_documents(
    body: EmbedRequest,
    request: Request,
    tasks: TasksDep,
    caller: Caller,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """Index text that is not on a web page (FAQ entries, tickets): a parent task with one
    child per document."""
    for brand in sorted({doc.brand for doc in body.documents}):
        check_brand(caller, brand)
    parent_id = task_id_for(Kind.EMBED, key)
    deadline = deadline_after(body.deadline_s)
    now = utcnow()

    def child(numbered: tuple[int, EmbedDocument]) -> TaskMessage:
        index, doc = numbered
        doc_id = doc.id or str(index)
        url = doc.url or f"doc://{doc.brand}/{doc_id}"
        title = doc.title or doc.text[:80]
        child_id = derived_id(parent_id, doc_id)
        return ChunkBatch(
            task_id=child_id,
            priority=body.priority,
            deadline=deadline,
            parent_id=parent_id,
            url=url,
            title=title,
            brand=doc.brand,
            chunks=chunk_document(text_document(doc.text, url=url, title=title)),
            fetched_at=now,
            report_task_id=child_id,
            report_kind=Kind.EMBED,
        )

    children = await built(list(enumerate(body.documents)), child)
    brands = {doc.brand for doc in body.documents}
    record, _created = await tasks.submit_parent(
        Kind.EMBED,
        parent_id,
        body.priority,
        children,
        brand=brands.pop() if len(brands) == 1 else None,
    )
    return accepted_response(request, record)


@maintenance.post("/maintenance/ping", status_code=202, response_model=Accepted, responses=REFUSED)
async def ping(
    request: Request,
    tasks: TasksDep,
    body: MaintenanceRequest | None = None,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """A no-op maintenance task: proves the maintenance service is consuming."""
    body = body or MaintenanceRequest()
    task = MaintenanceTask(
        task_id=task_id_for(Kind.MAINTENANCE, key),
        priority=body.priority,
        deadline=deadline_after(body.deadline_s),
        job="ping",
        params={"delay_ms": body.delay_ms} if body.delay_ms else {},
    )
    record, _created = await tasks.store.submit(Kind.MAINTENANCE, task, fresh=key is None)
    return accepted_response(request, record)
