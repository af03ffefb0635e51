from __future__ import annotations

import gzip

import pytest

from helpline.scraper.politeness import Robots, agent_token, host_key, parse_sitemap
from helpline.scraper.urls import canonical_url

URLSET = b"""<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc> https://docs.example/a.html </loc></url>
  <url><loc>https://docs.example/b.html</loc><lastmod>2024-01-01</lastmod></url>
</urlset>"""


def test_a_urlset_lists_its_pages() -> None:
    assert parse_sitemap(URLSET) == (
        [],
        ["https://docs.example/a.html", "https://docs.example/b.html"],
    )


def test_a_sitemap_index_lists_its_sitemaps() -> None:
    index = b"""<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
      <sitemap><loc>https://docs.example/s1.xml</loc></sitemap></sitemapindex>"""
    assert parse_sitemap(index) == (["https://docs.example/s1.xml"], [])


def test_a_gzipped_sitemap_is_read() -> None:
    assert parse_sitemap(gzip.compress(URLSET))[1] == [
        "https://docs.example/a.html",
        "https://docs.example/b.html",
    ]


def test_entities_are_not_expanded() -> None:
    xxe = b"""<?xml version="1.0"?><!DOCTYPE u [<!ENTITY x SYSTEM "file:///etc/passwd">]>
    <urlset><url><loc>https://docs.example/&x;</loc></url></urlset>"""
    _, pages = parse_sitemap(xxe)
    assert all("root:" not in p for p in pages)


@pytest.mark.parametrize("body", [b"", b"not xml", b"\x1f\x8bbroken"])
def test_garbage_is_no_sitemap(body: bytes) -> None:
    assert parse_sitemap(body) == ([], [])


@pytest.mark.parametrize(
    ("canonical", "expected"),
    [
        (None, "https://docs.example/a"),
        ("https://docs.example/b", "https://docs.example/b"),
        ("https://www.docs.example/b", "https://www.docs.example/b"),
        ("https://evil.example/b", "https://docs.example/a"),
        ("https://docs.example:8443/b", "https://docs.example/a"),
        ("ftp://docs.example/b", "https://docs.example/a"),
        ("javascript:alert(1)", "https://docs.example/a"),
    ],
)
def test_canonical_urls_count_only_on_the_same_site(canonical: str | None, expected: str) -> None:
    assert canonical_url("https://docs.example/a", canonical) == expected


def test_agent_token_is_the_product_name() -> None:
    assert agent_token("HelplineBot/0.1 (+https://helpline.example/bot)") == "HelplineBot"
    assert agent_token("") == "*"


def test_host_keys_are_safe_bucket_keys() -> None:
    assert host_key("http://127.0.0.1:8080/x") == "pace.127_0_0_1_8080"
    assert host_key("https://[::1]:8443/") == "pace.___1__8443"


def test_unreachable_robots_disallow_everything_and_4xx_nothing() -> None:
    assert not Robots(None, reachable=False).allows("https://docs.example/", "HelplineBot")
    assert Robots(None, reachable=True).allows("https://docs.example/", "HelplineBot")
