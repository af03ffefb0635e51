"""Scraper subscribers: a page in, chunks out to the embedder, new pages out to the crawl."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from helpline.common.breaker import BreakerPolicy
from helpline.common.bus import Bus
from helpline.common.chunking import Document, content_hash
from helpline.common.crawlstate import CrawlLedger
from helpline.common.errors import Deferred, Permanent, Retryable
from helpline.common.messages import (
    BatchLimits,
    Chunk,
    ChunkBatch,
    CrawlTask,
    EventType,
    LineageStep,
    PageState,
    RenderMode,
    ScrapeTask,
    TaskEvent,
    derived_id,
    utcnow,
)
from helpline.common.observability import current_trace_id
from helpline.common.pagestate import PageStates, page_state_key
from helpline.common.retrypolicy import RetryPolicy
from helpline.common.subjects import Bucket, Kind
from helpline.common.taskpool import TaskConsumer
from helpline.common.worker import REPORTED_LATER, Result, TaskContext
from helpline.scraper.fetch import Fetcher, FetchResult, PageGone, Validators
from helpline.scraper.markdown import to_markdown
from helpline.scraper.parsing import Parser, Times
from helpline.scraper.politeness import Politeness
from helpline.scraper.render import Renderer, is_html
from helpline.scraper.spans import step
from helpline.scraper.urls import canonical_url, in_scope, normalize_url

log = logging.getLogger(__name__)

# Remembered per page so an unchanged (304) crawl page still leads to the pages it links.
MAX_REMEMBERED_LINKS = 2_000
# Links settled per crawl in this process, for this many recent crawls at most.
MAX_SETTLED_CRAWLS = 16
MAX_SETTLED_LINKS = 200_000


class SettledLinks:
    """Links this process knows a crawl has settled: claimed (by any replica) or out of scope.

    Most of a page's links (a documentation site's menu) were settled by an earlier page;
    asking the `crawls` bucket again costs a KV round trip each (about 18 a page on the
    PostgreSQL manual). A claim is final for its crawl, so a link found here can be skipped.
    """

    def __init__(self) -> None:
        self._crawls: OrderedDict[str, set[str]] = OrderedDict()

    def of(self, crawl_id: str) -> set[str]:
        links = self._crawls.pop(crawl_id, None)
        self._crawls[crawl_id] = links = links if links is not None else set()
        while len(self._crawls) > MAX_SETTLED_CRAWLS:
            self._crawls.popitem(last=False)
        return links

    @staticmethod
    def add(links: set[str], link: str) -> None:
        if len(links) < MAX_SETTLED_LINKS:
            links.add(link)


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
        politeness: Politeness | None = None,
        parser: Parser | None = None,
        renderer: Renderer | None = None,
    ) -> None:
        self.bus = bus
        self.fetcher = fetcher
        self.limits = limits
        self.host_breaker = host_breaker
        self.lease_s = batch_lease_s
        self.parser = parser or Parser()
        self.politeness = politeness or Politeness(
            fetcher, lambda: bus.buckets.get(Bucket.HOSTS), obey_robots=False
        )
        self.renderer = renderer
        self.settled = SettledLinks()
        self.pages = PageStates(bus.buckets)
        self.crawls = CrawlLedger(bus.buckets)

    async def fetch(self, url: str, validators: Validators | None = None) -> FetchResult:
        """Fetch politely, through the site's breaker: a site that keeps failing is left alone."""
        robots = await self.politeness.check(url)
        await self.politeness.wait_turn(url, robots)
        breaker = self.bus.breakers.get(f"host:{urlsplit(url).hostname}", self.host_breaker)
        breaker.before_call()
        try:
            page = await self.fetcher.fetch(url, validators)
        except Deferred as exc:
            # The site named its own pause (Retry-After): every replica keeps it.
            if exc.retry_after is not None:
                await self.politeness.hold(url, exc.retry_after)
            raise
        except Retryable as exc:
            breaker.failed_and_defer(exc)
            raise
        breaker.succeeded()  # a 404 or a blocked address says nothing against the site
        return page

    async def scrape(self, task: ScrapeTask, ctx: TaskContext) -> Result:
        key = page_state_key(task.brand, task.url)
        previous = await self.pages.load(key)
        crawling = task.crawl is not None and task.parent_id is not None
        # A crawl page may be skipped as unchanged only if its links were kept to follow.
        conditional = previous is not None and (not crawling or previous.links is not None)
        validators = (
            Validators(previous.etag, previous.last_modified)
            if previous is not None and conditional
            else None
        )
        fetch_at, fetch_started = utcnow(), time.perf_counter()
        try:
            if task.batch is not None and task.parent_id is not None:
                page = await self._fetch_in_batch(task, task.batch, task.parent_id, validators)
            else:
                page = await self.fetch(task.url, validators)
        except PageGone:
            if previous is None:
                raise
            if crawling:
                # A crawl's page is removed only after two crawls in a row missed it (a flaky
                # page is not dropped at once): the source's sweep removes it (`sources`).
                await self._seen(key, previous, task.parent_id, missed=True)
                raise
            # Indexed before, gone now: its chunks leave the index (the embedder reports it).
            await self._submit(task, previous.url, previous.title, [], key, None, utcnow())
            return REPORTED_LATER
        if self.renderer is not None and task.render is RenderMode.ALWAYS and not page.not_modified:
            page = await self.renderer.maybe_render(page, task.render)
        fetch_ms = (time.perf_counter() - fetch_started) * 1000
        ctx.checkpoint()
        if page.not_modified and previous is not None:
            if crawling:
                await self._seen(key, previous, task.parent_id)
                await self._follow_links(task, previous.links or [])
            return {
                "url": previous.url,
                "not_modified": True,
                "chunks_indexed": previous.chunks,
                "embedded": 0,
                "new": 0,
                "changed": 0,
                "unchanged": previous.chunks,
                "removed": 0,
            }
        doc, chunks, times = await self._parse(page, task.render, ctx)
        if crawling:
            await self._follow_links(task, doc.links)
        url = canonical_url(page.url, doc.canonical)
        title = doc.title or url
        validators = page.validators
        state = PageState(
            url=url,
            etag=validators.etag,
            last_modified=validators.last_modified,
            title=title,
            links=doc.links[:MAX_REMEMBERED_LINKS] if crawling else None,
            lineage=_lineage(task.task_id, fetch_at, fetch_ms, times),
            seen_by=task.parent_id if crawling else None,
            changed_at=previous.changed_at if previous is not None else None,
            content_hash=content_hash(chunks),
        )
        await self._submit(task, url, title, chunks, key, state, page.fetched_at, to_markdown(doc))
        return REPORTED_LATER

    async def _seen(
        self, key: str, previous: PageState, crawl_id: str | None, *, missed: bool = False
    ) -> None:
        """Note that crawl `crawl_id` reached the page: found (misses start again) or gone
        (one more miss, once per crawl)."""
        if missed:
            again = previous.seen_by == crawl_id
            misses = previous.misses + (0 if again else 1)
        else:
            misses = 0
        if previous.seen_by != crawl_id or previous.misses != misses:
            update = {"misses": misses, "seen_by": crawl_id}
            await self.pages.save(key, previous.model_copy(update=update))

    async def _parse(
        self, page: FetchResult, render: RenderMode, ctx: TaskContext
    ) -> tuple[Document, list[Chunk], Times]:
        """Extract and chunk the page; with `render=auto`, first in a browser if it is a shell."""
        judge = (
            self.renderer.pool.options.min_text_chars
            if self.renderer is not None and render is RenderMode.AUTO and is_html(page)
            else None
        )
        pdf = page.body if page.is_pdf else None
        limits = (self.limits.max_chars, self.limits.overlap_chars)
        parsed, times = await self.parser.parse_timed(page.url, page.text, pdf, *limits, judge)
        if not parsed.shell.render or self.renderer is None:
            return parsed.doc, parsed.chunks, times
        log.debug("rendering %s: %s", page.url, "; ".join(parsed.shell.reasons()))
        page = await self.renderer.render(page)
        ctx.checkpoint()
        parsed, times = await self.parser.parse_timed(page.url, page.text, None, *limits)
        return parsed.doc, parsed.chunks, times

    async def _submit(
        self,
        task: ScrapeTask,
        url: str,
        title: str,
        chunks: list[Chunk],
        key: str,
        state: PageState | None,
        fetched_at: datetime,
        markdown: str | None = None,
    ) -> None:
        await self.bus.submit(
            Kind.EMBED,
            ChunkBatch(
                task_id=derived_id(task.task_id, "embed"),
                priority=task.priority,
                deadline=task.deadline,
                url=url,
                title=title,
                brand=task.brand,
                chunks=chunks,
                fetched_at=fetched_at,
                report_task_id=task.task_id,
                report_kind=Kind.SCRAPE,
                notify=task.notify,
                page_key=key,
                page_state=state,
                markdown=markdown,
            ),
        )

    async def _fetch_in_batch(
        self,
        task: ScrapeTask,
        limits: BatchLimits,
        parent_id: str,
        validators: Validators | None = None,
    ) -> FetchResult:
        """Fetch within the batch's limits, shared by every replica; waiting spends no attempt."""
        wait = await self.crawls.enter_batch_gate(
            parent_id, task.task_id, limits, self.lease_s, time.time()
        )
        if wait:
            raise Deferred("waiting for the batch's concurrency or delay", retry_after=wait)
        try:
            return await self.fetch(task.url, validators)
        finally:
            await self.crawls.leave_batch_gate(parent_id, task.task_id)

    async def _follow_links(self, task: ScrapeTask, links: list[str]) -> None:
        scope, parent_id = task.crawl, task.parent_id
        if scope is None or parent_id is None or task.depth >= scope.max_depth:
            return
        settled = self.settled.of(parent_id)
        with step("follow links", attributes={"helpline.page.links": len(links)}) as traced:
            started = 0
            for link in links:
                if link in settled:
                    continue
                if not in_scope(link, scope):
                    SettledLinks.add(settled, link)
                    continue
                # Not remembered when disallowed: robots.txt may allow it by the next page.
                if not await self.politeness.allowed(link):
                    continue
                if await self.crawls.claim_page(parent_id, link, scope.max_pages, task.task_id):
                    await self._start_page(parent_id, task, link, task.depth + 1)
                    started += 1
                # Claimed now, claimed before, or over the crawl's budget: settled for good (a
                # claim whose page was not published yet is not: the add comes after it).
                SettledLinks.add(settled, link)
            traced.set_attribute("helpline.crawl.pages_started", started)

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
        await self.crawls.claim_page(task.task_id, root, task.scope.max_pages, task.task_id)
        # Submitted even when already claimed: a redelivered crawl re-publishes its first page,
        # which the bus's duplicate window (same task id) drops if it was already sent.
        await self._start_page(task.task_id, task, root, 0)
        if task.scope.max_depth > 0:
            # Pages only the sitemap knows of (not linked from the start page's subtree).
            for url in await self.politeness.sitemap_urls(root):
                if not in_scope(url, task.scope) or not await self.politeness.allowed(url):
                    continue
                if await self.crawls.claim_page(
                    task.task_id, url, task.scope.max_pages, task.task_id
                ):
                    await self._start_page(task.task_id, task, url, 1)
                elif await self.crawls.pages_claimed(task.task_id) >= task.scope.max_pages:
                    break  # a sitemap may list far more pages than the crawl may take
        return REPORTED_LATER


def _lineage(task_id: str, fetch_at: datetime, fetch_ms: float, times: Times) -> list[LineageStep]:
    """The scraper's steps of a page's lineage: fetched (with any rendering), extracted, chunked."""
    trace_id = current_trace_id()
    started, extracted, chunked = times
    return [
        LineageStep(step=step, at=at, duration_ms=round(ms, 3), task_id=task_id, trace_id=trace_id)
        for step, at, ms in (
            ("fetched", fetch_at, fetch_ms),
            ("extracted", datetime.fromtimestamp(started / 1e9, UTC), (extracted - started) / 1e6),
            ("chunked", datetime.fromtimestamp(extracted / 1e9, UTC), (chunked - extracted) / 1e6),
        )
    ]


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
