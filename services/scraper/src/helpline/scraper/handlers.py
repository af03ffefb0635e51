"""Scraper subscribers: a page in, chunks out to the embedder, new pages out to the crawl."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from helpline.common.breaker import BreakerPolicy
from helpline.common.bus import CRAWLS_BUCKET, Bus
from helpline.common.chunking import Document, chunk_document
from helpline.common.crawlstate import claim_page, enter_batch_gate, leave_batch_gate
from helpline.common.errors import Deferred, Permanent, Retryable
from helpline.common.messages import (
    BatchLimits,
    ChunkBatch,
    CrawlTask,
    EventType,
    ScrapeTask,
    TaskEvent,
    derived_id,
)
from helpline.common.subjects import Kind
from helpline.common.worker import REPORTED_LATER, Result, RetryPolicy, TaskConsumer, TaskContext
from helpline.scraper.extract import extract
from helpline.scraper.fetch import Fetcher, FetchResult
from helpline.scraper.render import Renderer
from helpline.scraper.urls import in_scope, normalize_url


@dataclass(frozen=True)
class ChunkingLimits:
    max_chars: int
    overlap_chars: int


class Scraper:
    """Turns scrape and crawl tasks into chunk batches and child pages."""

    def __init__(
        self,
        bus: Bus,
        fetcher: Fetcher,
        limits: ChunkingLimits,
        host_breaker: BreakerPolicy,
        batch_lease_s: float = 40.0,
        renderer: Renderer | None = None,
    ) -> None:
        self.bus = bus
        self.fetcher = fetcher
        self.limits = limits
        self.host_breaker = host_breaker
        self.lease_s = batch_lease_s
        self.renderer = renderer

    async def fetch(self, url: str) -> FetchResult:
        """Fetch through the site's breaker: a site that keeps failing is left alone a while."""
        breaker = self.bus.breakers.get(f"host:{urlsplit(url).hostname}", self.host_breaker)
        breaker.before_call()
        try:
            page = await self.fetcher.fetch(url)
        except Retryable as exc:
            breaker.failed_and_defer(exc)
            raise
        breaker.succeeded()  # a 404 or a blocked address says nothing against the site
        return page

    async def scrape(self, task: ScrapeTask, ctx: TaskContext) -> Result:
        if task.batch is not None and task.parent_id is not None:
            page = await self._fetch_in_batch(task, task.batch, task.parent_id)
        else:
            page = await self.fetch(task.url)
        if self.renderer is not None:
            page = await self.renderer.maybe_render(page, task.render)
        ctx.checkpoint()
        doc = await asyncio.to_thread(extract, page.text, page.url)
        chunks = await asyncio.to_thread(
            chunk_document, doc, self.limits.max_chars, self.limits.overlap_chars
        )
        if task.crawl is not None and task.parent_id is not None:
            await self._follow_links(task, doc)
        await self.bus.submit(
            Kind.EMBED,
            ChunkBatch(
                task_id=derived_id(task.task_id, "embed"),
                priority=task.priority,
                deadline=task.deadline,
                url=page.url,
                title=doc.title or page.url,
                brand=task.brand,
                chunks=chunks,
                fetched_at=page.fetched_at,
                report_task_id=task.task_id,
                report_kind=Kind.SCRAPE,
            ),
        )
        return REPORTED_LATER

    async def _fetch_in_batch(
        self, task: ScrapeTask, limits: BatchLimits, parent_id: str
    ) -> FetchResult:
        """Fetch within the batch's limits, shared by every replica; waiting spends no attempt."""
        gate = await self.bus.kv(CRAWLS_BUCKET)
        wait = await enter_batch_gate(
            gate, parent_id, task.task_id, limits, self.lease_s, time.time()
        )
        if wait:
            raise Deferred("waiting for the batch's concurrency or delay", retry_after=wait)
        try:
            return await self.fetch(task.url)
        finally:
            await leave_batch_gate(gate, parent_id, task.task_id)

    async def _follow_links(self, task: ScrapeTask, doc: Document) -> None:
        scope, parent_id = task.crawl, task.parent_id
        if scope is None or parent_id is None or task.depth >= scope.max_depth:
            return
        crawls = await self.bus.kv(CRAWLS_BUCKET)
        for link in doc.links:
            if not in_scope(link, scope):
                continue
            if not await claim_page(crawls, parent_id, link, scope.max_pages):
                continue
            await self._start_page(parent_id, task, link, task.depth + 1)

    async def _start_page(
        self, parent_id: str, origin: ScrapeTask | CrawlTask, url: str, depth: int
    ) -> None:
        scope = origin.crawl if isinstance(origin, ScrapeTask) else origin.scope
        child = ScrapeTask(
            task_id=derived_id(parent_id, url),
            priority=origin.priority,
            deadline=origin.deadline,
            parent_id=parent_id,
            url=url,
            brand=origin.brand,
            depth=depth,
            crawl=scope,
            render=origin.render,
        )
        # The record exists (and the parent counts it) before the page can finish.
        await self.bus.emit(
            TaskEvent(
                task_id=child.task_id,
                kind=Kind.SCRAPE,
                type=EventType.CREATED,
                priority=child.priority,
                parent_id=parent_id,
                result={"url": url, "depth": depth},
            )
        )
        await self.bus.submit(Kind.SCRAPE, child)

    async def crawl(self, task: CrawlTask, ctx: TaskContext) -> Result:
        root = normalize_url(task.url)
        if root is None:
            raise Permanent("not an http(s) URL")
        crawls = await self.bus.kv(CRAWLS_BUCKET)
        await claim_page(crawls, task.task_id, root, task.scope.max_pages)
        # Submitted even when already claimed: a redelivered crawl re-publishes its first page,
        # which the bus's duplicate window (same task id) drops if it was already sent.
        await self._start_page(task.task_id, task, root, 0)
        return REPORTED_LATER


def build_consumers(
    bus: Bus, scraper: Scraper, *, concurrency: int, policy: RetryPolicy
) -> list[TaskConsumer]:
    return [
        TaskConsumer(
            bus, Kind.SCRAPE, ScrapeTask, scraper.scrape, concurrency=concurrency, policy=policy
        ),
        # Starting a crawl is one claim and one publish: two at a time is plenty.
        TaskConsumer(bus, Kind.CRAWL, CrawlTask, scraper.crawl, concurrency=2, policy=policy),
    ]
