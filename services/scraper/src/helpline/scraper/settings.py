"""Scraper settings: the only module of the scraper that reads the environment."""

from __future__ import annotations

import os

from pydantic import Field

from helpline.common.settings import HelplineSettings


class ScraperSettings(HelplineSettings):
    scraper_allowed_hosts: str = Field(
        default="",
        description="Hosts or CIDRs exempt from the public-address rule (comma-separated), e.g. 127.0.0.1.",
    )
    scraper_concurrency: int = Field(default=6, description="Pages fetched at once per replica.")
    scraper_user_agent: str = Field(
        default="HelplineBot/0.1 (+https://helpline.example/bot)",
        description="User-Agent sent with every fetch.",
    )
    scraper_timeout_s: float = Field(default=15.0, description="Per-request fetch timeout.")
    scraper_max_bytes: int = Field(default=5_000_000, description="Largest page body accepted.")
    scraper_max_redirects: int = Field(
        default=5, description="Redirect hops followed, each re-checked."
    )
    scraper_max_header_bytes: int = Field(
        default=32_768, description="Largest response header block accepted."
    )
    scraper_obey_robots: bool = Field(
        default=True, description="Follow robots.txt (RFC 9309), Crawl-delay included."
    )
    scraper_host_interval_s: float = Field(
        default=0.1,
        description="Least time between two requests to one host, across every replica "
        "(a site's Crawl-delay lengthens it).",
    )
    scraper_extract_processes: int = Field(
        default=-1,
        ge=-1,
        description="Worker processes extracting pages, at a lower CPU priority than the "
        "service (-1: one per core, at most 4; 0: a thread in the service, one core in all).",
    )
    scraper_robots_ttl_s: float = Field(
        default=3600.0, description="How long a site's robots.txt is kept before it is read again."
    )
    chunk_max_chars: int = Field(
        default=700,
        description="Longest chunk, in characters (about 150 tokens: the model is several times faster below 256).",
    )
    chunk_overlap_chars: int = Field(
        default=100, description="Text carried over between chunks of a section."
    )
    breaker_host_failures: int = Field(
        default=5, description="Failures of one site that open its breaker."
    )
    breaker_host_open_s: float = Field(
        default=30.0, description="How long a site's breaker stays open."
    )
    # Browser rendering (render.py).
    browser_executable_path: str = Field(
        default_factory=lambda: (
            "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else ""
        ),
        description="Chromium to render with (Debian's by default); empty: Playwright's own.",
    )
    browser_pages: int = Field(default=4, ge=1, description="Pages rendered at once per replica.")
    browser_page_uses: int = Field(
        default=50, ge=1, description="Renders before a page (and its context) is replaced."
    )
    browser_uses: int = Field(
        default=1000, ge=1, description="Renders before the browser is restarted."
    )
    browser_max_memory_mb: int = Field(
        default=1500,
        description="Browser memory (proportional set size of all its processes) that restarts it.",
    )
    browser_timeout_s: float = Field(default=20.0, description="Per-page render timeout.")
    browser_settle_s: float = Field(
        default=2.0, description="Longest wait after load for a page's scripts to fill it in."
    )
    render_min_text_chars: int = Field(
        default=200,
        description=(
            "With render=auto, pages with scripts whose main content (navigation, header and "
            "footer left out) is shorter than this and unfinished are rendered (shells.py)."
        ),
    )
    breaker_browser_failures: int = Field(
        default=5, description="Browser crashes that open its breaker."
    )
    breaker_browser_open_s: float = Field(
        default=45.0, description="How long the browser breaker stays open."
    )
