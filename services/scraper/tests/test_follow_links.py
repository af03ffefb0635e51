from __future__ import annotations

from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from helpline.common.breaker import BreakerPolicy
from helpline.common.crawlstate import CrawlLedger
from helpline.common.messages import CrawlScope, ScrapeTask
from helpline.scraper.handlers import ChunkingLimits, Scraper
from helpline.scraper.parsing import Parser

ROOT = "https://docs.example/manual/index.html"


class FakeKV:
    """The `crawls` bucket: create fails on an existing key, as JetStream's does."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[bytes, int]] = {}
        self.creates: list[str] = []

    async def create(self, key: str, value: bytes) -> int:
        self.creates.append(key)
        if key in self.values:
            raise KeyWrongLastSequenceError
        self.values[key] = (value, len(self.creates))
        return len(self.creates)

    async def get(self, key: str) -> Any:
        if key not in self.values:
            raise KeyNotFoundError
        value, revision = self.values[key]
        return type("Entry", (), {"value": value, "revision": revision})()

    async def put(self, key: str, value: bytes) -> int:
        revision = self.values.get(key, (b"", 0))[1] + 1
        self.values[key] = (value, revision)
        return revision

    async def update(self, key: str, value: bytes, last: int) -> int:
        if self.values.get(key, (b"", -1))[1] != last:
            raise KeyWrongLastSequenceError
        self.values[key] = (value, last + 1)
        return last + 1


class FakeBuckets:
    """Every bucket is the one fake `crawls` bucket (the only one these paths use)."""

    def __init__(self, kv: FakeKV) -> None:
        self.kv = kv

    async def get(self, name: str) -> FakeKV:
        return self.kv


class FakeBus:
    def __init__(self) -> None:
        self.crawls = FakeKV()
        self.submitted: list[str] = []

    @property
    def buckets(self) -> FakeBuckets:
        return FakeBuckets(self.crawls)

    async def emit(self, event: Any) -> None:
        return None

    async def submit(self, kind: Any, task: ScrapeTask) -> None:
        self.submitted.append(task.url)


class AllowAll:
    async def allowed(self, url: str) -> bool:
        return True


def page_task(url: str, crawl_id: str = "crawl-1", max_pages: int = 100) -> ScrapeTask:
    scope = CrawlScope(root_url=ROOT, max_pages=max_pages, max_depth=5)
    return ScrapeTask(
        task_id=f"t-{url}", parent_id=crawl_id, url=url, brand="acme", crawl=scope, depth=0
    )


def scraper(bus: FakeBus) -> Scraper:
    return Scraper(
        bus,  # type: ignore[arg-type]
        fetcher=None,  # type: ignore[arg-type]
        limits=ChunkingLimits(700, 100),
        host_breaker=BreakerPolicy(),
        politeness=AllowAll(),  # type: ignore[arg-type]
        parser=Parser(processes=0),
    )


def link(name: str) -> str:
    return f"https://docs.example/manual/{name}.html"


def url_claims(kv: FakeKV) -> int:
    return sum(".url." in key for key in kv.creates)


async def test_a_link_is_claimed_once_per_crawl_however_many_pages_repeat_it() -> None:
    bus = FakeBus()
    s = scraper(bus)
    menu = [link(n) for n in ("intro", "install", "config", "backup")]
    await s._follow_links(page_task(link("intro")), [*menu, "https://other.example/x.html"])
    assert url_claims(bus.crawls) == 4
    # The next pages carry the same menu: nothing to ask the bucket about but the new link.
    await s._follow_links(page_task(link("install")), [*menu, link("tuning")])
    await s._follow_links(page_task(link("config")), menu)
    assert url_claims(bus.crawls) == 5
    assert bus.submitted == [*menu, link("tuning")]


async def test_links_claimed_elsewhere_or_over_budget_are_not_asked_about_again() -> None:
    bus = FakeBus()
    other_replica, s = scraper(bus), scraper(bus)
    await other_replica._follow_links(page_task(link("x")), [link("a"), link("b")])
    await s._follow_links(page_task(link("a"), max_pages=3), [link("a"), link("c"), link("d")])
    assert bus.submitted == [link("a"), link("b"), link("c")]  # "d" is over the budget of 3
    before = url_claims(bus.crawls)
    await s._follow_links(page_task(link("c"), max_pages=3), [link("a"), link("c"), link("d")])
    assert url_claims(bus.crawls) == before


async def test_each_crawl_claims_its_own_links() -> None:
    bus = FakeBus()
    s = scraper(bus)
    await s._follow_links(page_task(link("a"), "crawl-1"), [link("b")])
    await s._follow_links(page_task(link("a"), "crawl-2"), [link("b")])
    assert bus.submitted == [link("b"), link("b")]


async def test_a_redelivered_page_publishes_again_what_it_had_claimed() -> None:
    bus = FakeBus()
    died, s = scraper(bus), scraper(bus)
    # The first delivery claimed both links, then its process died before publishing "b".
    await died._follow_links(page_task(link("a")), [link("a")])
    crawls = CrawlLedger(bus.buckets)  # type: ignore[arg-type]
    assert await crawls.claim_page("crawl-1", link("b"), 100, f"t-{link('a')}")
    # Redelivered to another replica: its own claims are its own, so both are published.
    await s._follow_links(page_task(link("a")), [link("a"), link("b")])
    assert bus.submitted == [link("a"), link("a"), link("b")]
