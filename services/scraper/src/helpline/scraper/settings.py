"""Scraper settings: the only module of the scraper that reads the environment."""

from __future__ import annotations

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
        default=0,
        description="Worker processes extracting pages (0: a thread, one core in all); "
        "set it to the cores the scraper may use.",
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
