"""Fresh citations: a cited page older than its refresh period is scraped again, once.

The period is its source's `refresh_s` (its brand's source whose root folder holds the
page) or `HELPLINE_STALE_AFTER_S`. The re-scrape is a `high` scrape whose id is derived from
brand, URL and the period's number, so however many answers cite the page within a period
(on any gateway replica) it is one task; the scrape's conditional GET makes an unchanged
page cheap, and a page that now answers 404/410 is removed (the brand's generation moves).
Nothing here delays an answer: the re-scrapes are submitted after it, in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

from helpline.common.documents import under
from helpline.common.messages import ScrapeTask, Source, derived_id, utcnow
from helpline.common.sources import Source as Site
from helpline.common.sources import SourceStore
from helpline.common.subjects import Kind, Priority
from helpline.gateway.tasks import Tasks

log = logging.getLogger(__name__)

#: How long the list of sources is reused before it is read again.
SOURCES_TTL_S = 30.0
#: Re-scrape ids this replica already submitted (so a popular page costs no bus call).
REMEMBERED = 10_000


def refresh_task_id(brand: str, url: str, period_s: float, now: float) -> str:
    """The re-scrape of `url` for the period of `period_s` that `now` falls in."""
    return derived_id("refresh", brand, url, str(int(now // period_s)))


class Freshness:
    """Queues the re-scrape of stale cited pages."""

    def __init__(self, tasks: Tasks, stale_after_s: float) -> None:
        self.tasks = tasks
        self.stale_after_s = stale_after_s
        self._sites: list[Site] = []
        self._sites_at = float("-inf")
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._running: set[asyncio.Task[None]] = set()

    def cited(self, sources: Sequence[Source]) -> None:
        """Note an answer's sources; stale pages are re-scraped in the background."""
        if not any(s.fetched_at is not None and s.brand for s in sources):
            return
        job = asyncio.create_task(self._refresh(list(sources)))
        self._running.add(job)
        job.add_done_callback(self._running.discard)

    async def _refresh(self, sources: list[Source]) -> None:
        try:
            now = time.time()
            sites = await self._current_sites(now)
            for source in sources:
                if source.fetched_at is None or not source.brand:
                    continue
                url = source.url.split("#", 1)[0]  # a PDF page's citation is its file's
                if not url.startswith(("http://", "https://")):
                    continue  # text sent to /embed: nothing to fetch
                period = self._period(source.brand, url, sites)
                if (utcnow() - source.fetched_at).total_seconds() < period:
                    continue
                task_id = refresh_task_id(source.brand, url, period, now)
                if task_id in self._sent:
                    continue
                self._sent[task_id] = None
                while len(self._sent) > REMEMBERED:
                    self._sent.popitem(last=False)
                task = ScrapeTask(
                    task_id=task_id, priority=Priority.HIGH, url=url, brand=source.brand
                )
                # Idempotent by id: a period's re-scrape is one task on every replica.
                await self.tasks.store.submit(Kind.SCRAPE, task)
        except Exception as exc:  # an answer was served; a missed refresh waits for the next
            log.warning("re-scraping stale cited pages: %r", exc)

    def _period(self, brand: str, url: str, sites: list[Site]) -> float:
        for site in sites:
            if site.brand == brand and under(site.url)(url):
                return float(site.refresh_s)
        return self.stale_after_s

    async def _current_sites(self, now: float) -> list[Site]:
        if now - self._sites_at > SOURCES_TTL_S:
            self._sites = await SourceStore(self.tasks.bus.buckets).all()
            self._sites_at = now
        return self._sites

    async def stop(self) -> None:
        for job in list(self._running):
            job.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
