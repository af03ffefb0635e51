"""Scraper wiring."""

from __future__ import annotations

import asyncio

from helpline.common.breaker import BreakerPolicy
from helpline.common.bus import Bus
from helpline.common.guard import AllowList
from helpline.common.runtime import retry_policy
from helpline.common.subjects import Bucket
from helpline.common.taskpool import TaskConsumer
from helpline.scraper.browser import BrowserOptions, BrowserPool
from helpline.scraper.fetch import Fetcher
from helpline.scraper.handlers import ChunkingLimits, Scraper, build_consumers
from helpline.scraper.parsing import Parser
from helpline.scraper.politeness import Politeness
from helpline.scraper.render import Renderer
from helpline.scraper.settings import ScraperSettings


class ScraperComponent:
    name = "scraper"

    def __init__(self, settings: ScraperSettings) -> None:
        self.settings = settings
        self.fetcher: Fetcher | None = None
        self.parser: Parser | None = None
        self.renderer: Renderer | None = None

    def consumers(self, bus: Bus) -> list[TaskConsumer]:
        s = self.settings
        self.fetcher = Fetcher(
            AllowList.parse(s.scraper_allowed_hosts),
            user_agent=s.scraper_user_agent,
            timeout_s=s.scraper_timeout_s,
            max_bytes=s.scraper_max_bytes,
            max_redirects=s.scraper_max_redirects,
            max_header_bytes=s.scraper_max_header_bytes,
        )
        self.parser = Parser(processes=s.scraper_extract_processes)
        politeness = Politeness(
            self.fetcher,
            lambda: bus.buckets.get(Bucket.HOSTS),
            host_interval_s=s.scraper_host_interval_s,
            obey_robots=s.scraper_obey_robots,
            robots_ttl_s=s.scraper_robots_ttl_s,
        )
        self.renderer = Renderer(
            BrowserPool(
                AllowList.parse(s.scraper_allowed_hosts),
                BrowserOptions(
                    executable_path=s.browser_executable_path,
                    pages=s.browser_pages,
                    page_uses=s.browser_page_uses,
                    browser_uses=s.browser_uses,
                    max_memory_mb=s.browser_max_memory_mb,
                    timeout_s=s.browser_timeout_s,
                    settle_s=s.browser_settle_s,
                    min_text_chars=s.render_min_text_chars,
                    max_bytes=s.scraper_max_bytes,
                    user_agent=s.scraper_user_agent,
                ),
            ),
            bus.breakers.get(
                "browser",
                BreakerPolicy(failures=s.breaker_browser_failures, open_s=s.breaker_browser_open_s),
            ),
        )
        scraper = Scraper(
            bus,
            self.fetcher,
            ChunkingLimits(s.chunk_max_chars, s.chunk_overlap_chars),
            BreakerPolicy(failures=s.breaker_host_failures, open_s=s.breaker_host_open_s),
            # A batch slot held by a replica that died is free again after this long.
            batch_lease_s=s.scraper_timeout_s * 2 + 10,
            politeness=politeness,
            parser=self.parser,
            renderer=self.renderer,
        )
        return build_consumers(
            bus, scraper, concurrency=s.scraper_concurrency, policy=retry_policy(s)
        )

    async def start(self, bus: Bus) -> None:
        return None

    async def stop(self) -> None:
        if self.fetcher is not None:
            await self.fetcher.aclose()
        if self.parser is not None:
            await asyncio.to_thread(self.parser.close)
        if self.renderer is not None:
            await self.renderer.pool.close()
