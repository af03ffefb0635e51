"""Polite crawling: robots.txt (RFC 9309), a per-host pace shared by replicas, sitemaps.

- robots.txt is fetched once per origin and kept `robots_ttl_s` (RFC 9309 asks for at most
  24 hours). A 4xx answer means no rules (everything allowed); a 5xx answer or an
  unreachable server means everything is disallowed until it can be read again, and pages
  wait for it (`Retryable`). Redirects are followed (each hop through the SSRF guard).
- The pace of each host is one key in the `hosts` bucket holding when its next request may
  start; every replica reserves its turn there with compare-and-swap, so the pace holds
  across all of them. The gap is the larger of `HELPLINE_SCRAPER_HOST_INTERVAL_S` and the
  site's Crawl-delay (or Request-rate). A turn further away than `max_wait_s` is not waited
  for in the slot: the task is `Deferred` until then (no attempt spent). A 429/503 with
  Retry-After pushes the host's next turn back for every replica. A request woken for its
  turn more than a fifth of the gap late (a busy event loop) takes a new turn rather than
  crowd the one after it.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import lxml.etree
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from protego import Protego

from helpline.common.errors import Deferred, HelplineError, Permanent, Retryable
from helpline.common.kv import kv_get
from helpline.scraper.fetch import Fetcher
from helpline.scraper.spans import server_attributes, step
from helpline.scraper.urls import normalize_url

ROBOTS_MAX_BYTES = 512_000  # RFC 9309: parse at least the first 500 KiB
SITEMAP_MAX_BYTES = 20_000_000
MAX_SITEMAPS = 20
MAX_SITEMAP_URLS = 50_000
MAX_CRAWL_DELAY_S = 60.0
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

KvFactory = Callable[[], Awaitable[KeyValue]]


@dataclass(frozen=True)
class Robots:
    """One origin's rules; `parser` None with `reachable` False means "disallow everything"."""

    parser: Protego | None
    reachable: bool
    reason: str = ""
    expires_at: float = 0.0

    def allows(self, url: str, agent: str) -> bool:
        if not self.reachable:
            return False
        return self.parser is None or bool(self.parser.can_fetch(url, agent))

    def delay(self, agent: str) -> float:
        """Seconds between requests the site asks for (Crawl-delay or Request-rate)."""
        if self.parser is None:
            return 0.0
        delay = float(self.parser.crawl_delay(agent) or 0.0)
        rate = self.parser.request_rate(agent)
        if rate is not None and rate.requests:
            delay = max(delay, float(rate.seconds) / float(rate.requests))
        return min(delay, MAX_CRAWL_DELAY_S)

    def sitemaps(self) -> list[str]:
        return list(self.parser.sitemaps) if self.parser is not None else []


def agent_token(user_agent: str) -> str:
    """The product token robots.txt groups are matched against ("HelplineBot/0.1 (...)")."""
    return user_agent.split("/", 1)[0].split()[0] if user_agent.strip() else "*"


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


#: A turn woken later than this share of the interval after its time is given up for a new
#: one, at most `LATE_RETRIES` times (then the request goes, late).
LATE_SHARE = 0.2
LATE_RETRIES = 3


class Politeness:
    """robots.txt rules and a shared per-host pace for one scraper process."""

    def __init__(
        self,
        fetcher: Fetcher,
        hosts: KvFactory,
        *,
        host_interval_s: float = 0.0,
        obey_robots: bool = True,
        robots_ttl_s: float = 3600.0,
        robots_retry_s: float = 60.0,
        max_wait_s: float = 5.0,
    ) -> None:
        self.fetcher = fetcher
        self.agent = agent_token(fetcher.user_agent)
        self._hosts = hosts
        self.host_interval_s = host_interval_s
        self.obey_robots = obey_robots
        self.robots_ttl_s = robots_ttl_s
        self.robots_retry_s = robots_retry_s
        self.max_wait_s = max_wait_s
        self._robots: dict[str, Robots] = {}
        self._loading: dict[str, asyncio.Task[Robots]] = {}

    async def robots(self, url: str) -> Robots:
        """The origin's rules, from the cache or fetched now (one fetch per origin at a time)."""
        origin = origin_of(url)
        cached = self._robots.get(origin)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached
        loading = self._loading.get(origin)
        if loading is None:
            loading = self._loading[origin] = asyncio.create_task(self._load_and_keep(origin))
            loading.add_done_callback(lambda _: self._loading.pop(origin, None))
        return await asyncio.shield(loading)

    async def _load_and_keep(self, origin: str) -> Robots:
        # Cached before the in-flight entry is dropped: a caller arriving in between finds
        # one or the other, never neither (which would fetch robots.txt a second time).
        robots = self._robots[origin] = await self._load(origin)
        return robots

    async def _load(self, origin: str) -> Robots:
        now = time.monotonic()
        try:
            response = await self.fetcher.fetch_raw(f"{origin}/robots.txt", ROBOTS_MAX_BYTES)
        except Retryable as exc:
            return Robots(None, False, exc.message, now + self.robots_retry_s)
        except HelplineError:
            # Blocked redirect, redirect loop, oversized: the rules are unavailable (RFC 9309 2.3.1.3).
            return Robots(None, True, "", now + self.robots_ttl_s)
        if 200 <= response.status < 300:
            text = response.body.decode("utf-8", errors="replace")
            return Robots(Protego.parse(text), True, "", now + self.robots_ttl_s)
        if 400 <= response.status < 500:
            return Robots(None, True, "", now + self.robots_ttl_s)
        reason = f"robots.txt answered HTTP {response.status}"
        return Robots(None, False, reason, now + self.robots_retry_s)

    async def check(self, url: str) -> Robots:
        """Raise unless robots.txt lets us fetch `url`; returns the rules."""
        if not self.obey_robots:
            return Robots(None, True)
        cached = self._robots.get(origin_of(url))
        if cached is not None and cached.expires_at > time.monotonic():
            robots = cached
        else:  # read now, or being read for another page: a span shows the wait
            with step("robots", attributes=server_attributes(url)) as traced:
                robots = await self.robots(url)
                traced.set_attribute("helpline.robots.reachable", robots.reachable)
        if not robots.reachable:
            raise Retryable(
                f"{robots.reason or 'robots.txt unreachable'}: the site is treated as "
                "disallowing everything until it can be read",
                retry_after=self.robots_retry_s,
            )
        if not robots.allows(url, self.agent):
            raise Permanent("disallowed by robots.txt")
        return robots

    async def allowed(self, url: str) -> bool:
        """For filtering a crawl's links: False only when robots.txt disallows the URL."""
        if not self.obey_robots:
            return True
        robots = await self.robots(url)
        return not robots.reachable or robots.allows(url, self.agent)

    async def wait_turn(self, url: str, robots: Robots) -> None:
        """Reserve this host's next request slot across replicas and wait for it."""
        interval = max(self.host_interval_s, robots.delay(self.agent) if self.obey_robots else 0)
        if interval <= 0:
            return
        attributes = {**server_attributes(url), "helpline.politeness.interval_s": interval}
        with step("politeness wait", attributes=attributes) as traced:
            waited = 0.0
            try:
                for _ in range(LATE_RETRIES):
                    wait = await self._reserve(url, interval)
                    if wait <= 0:
                        return
                    due = time.monotonic() + wait
                    await asyncio.sleep(wait)
                    waited += wait
                    if time.monotonic() - due <= interval * LATE_SHARE:
                        return
                    # Woken late (a busy event loop): the turn after ours may be close now, and
                    # going anyway would crowd it. Take a new turn at the end of the line instead.
            finally:
                traced.set_attribute("helpline.politeness.waited_s", waited)

    async def _reserve(self, url: str, interval: float) -> float:
        kv = await self._hosts()
        key = host_key(url)
        while True:
            current = await kv_get(kv, key)
            now = time.time()
            start = max(now, float(current[0]) if current else 0.0)
            wait = start - now
            if wait > self.max_wait_s:
                raise Deferred("waiting for the site's crawl rate", retry_after=wait)
            value = repr(start + interval).encode()
            try:
                if current is None:
                    await kv.create(key, value)
                else:
                    await kv.update(key, value, last=current[1])
            except KeyWrongLastSequenceError:
                continue
            return wait

    async def hold(self, url: str, seconds: float) -> None:
        """The site asked us (Retry-After) to stay away `seconds`: no replica asks sooner."""
        kv = await self._hosts()
        key = host_key(url)
        while True:
            current = await kv_get(kv, key)
            until = time.time() + seconds
            if current is not None and float(current[0]) >= until:
                return
            try:
                if current is None:
                    await kv.create(key, repr(until).encode())
                else:
                    await kv.update(key, repr(until).encode(), last=current[1])
            except KeyWrongLastSequenceError:
                continue
            return

    async def sitemap_urls(self, root_url: str) -> list[str]:
        """Page URLs from the site's sitemaps: robots.txt's Sitemap lines and /sitemap.xml."""
        origin = origin_of(root_url)
        robots = await self.robots(root_url)
        queue = [*robots.sitemaps(), f"{origin}/sitemap.xml"]
        seen: set[str] = set()
        pages: dict[str, None] = {}
        while queue and len(seen) < MAX_SITEMAPS and len(pages) < MAX_SITEMAP_URLS:
            sitemap = normalize_url(queue.pop(0))
            if sitemap is None or sitemap in seen:
                continue
            seen.add(sitemap)
            try:
                response = await self.fetcher.fetch_raw(sitemap, SITEMAP_MAX_BYTES)
            except HelplineError:
                continue
            if not 200 <= response.status < 300:
                continue
            nested, found = parse_sitemap(response.body)
            queue.extend(nested)
            for loc in found[: MAX_SITEMAP_URLS - len(pages)]:
                url = normalize_url(loc)
                if url is not None:
                    pages[url] = None
        return list(pages)


def host_key(url: str) -> str:
    return "pace." + _KEY_UNSAFE.sub("_", urlsplit(url).netloc.lower())


_XML = lxml.etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True
)


def parse_sitemap(body: bytes) -> tuple[list[str], list[str]]:
    """(nested sitemaps, page URLs) of a sitemap or sitemap index, gzipped or not."""
    if body.startswith(b"\x1f\x8b"):
        inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        try:
            body = inflater.decompress(body, SITEMAP_MAX_BYTES)
        except zlib.error:
            return [], []
    try:
        root: Any = lxml.etree.fromstring(body, parser=_XML)
    except lxml.etree.LxmlError:
        return [], []
    locs = [" ".join(str(loc.text or "").split()) for loc in root.iterfind(".//{*}loc")]
    locs = [loc for loc in locs if loc]
    if str(root.tag).endswith("sitemapindex"):
        return locs, []
    return [], locs
