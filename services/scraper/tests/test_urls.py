from __future__ import annotations

import pytest

from helpline.common.messages import CrawlScope
from helpline.scraper.urls import in_scope, normalize_url, remove_dot_segments, same_site


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("HTTP://Example.COM/Docs", None, "http://example.com/Docs"),
        ("http://example.com:80/a", None, "http://example.com/a"),
        ("https://example.com:443/a", None, "https://example.com/a"),
        ("https://example.com:8443/a", None, "https://example.com:8443/a"),
        ("http://example.com", None, "http://example.com/"),
        ("http://example.com/a/./b/../c", None, "http://example.com/a/c"),
        ("http://example.com/a/b/..", None, "http://example.com/a/"),
        ("http://example.com/page#section", None, "http://example.com/page"),
        ("http://example.com/page?", None, "http://example.com/page"),
        ("http://example.com/s?q=a&p=2#x", None, "http://example.com/s?q=a&p=2"),
        ("http://example.com/a b", None, "http://example.com/a%20b"),
        ("http://example.com/a%20b", None, "http://example.com/a%20b"),
        ("https://bücher.example/", None, "https://xn--bcher-kva.example/"),
        ("http://Example.com./x", None, "http://example.com/x"),
        ("http://[::FFFF:7F00:1]:8080/", None, "http://[::ffff:7f00:1]:8080/"),
        ("  http://example.com/\n\tx ", None, "http://example.com/x"),
        (
            "../billing/",
            "https://help.example/docs/account/reset",
            "https://help.example/docs/billing/",
        ),
        ("faq.html", "https://help.example/docs/", "https://help.example/docs/faq.html"),
        ("/terms", "https://help.example/docs/a", "https://help.example/terms"),
        ("//cdn.example/x", "https://help.example/", "https://cdn.example/x"),
        ("?page=2", "https://help.example/list?page=1", "https://help.example/list?page=2"),
        ("#top", "https://help.example/a", "https://help.example/a"),
    ],
)
def test_normalize_url(url: str, base: str | None, expected: str) -> None:
    assert normalize_url(url, base) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "mailto:help@example.com",
        "javascript:void(0)",
        "tel:+15551234",
        "data:text/html,<p>hi</p>",
        "ftp://example.com/file",
        "file:///etc/passwd",
        "relative/without/base",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http:///nohost",
    ],
)
def test_normalize_url_rejects_unusable_links(url: str) -> None:
    assert normalize_url(url) is None


def test_normalize_url_rejects_non_http_links_even_with_a_base() -> None:
    assert normalize_url("mailto:help@example.com", "https://example.com/") is None
    assert normalize_url("javascript:alert(1)", "https://example.com/") is None


def test_normalize_url_is_idempotent() -> None:
    once = normalize_url("HTTPS://WWW.Example.com:443/a/../b c?x=1#f")
    assert once == "https://www.example.com/b%20c?x=1"
    assert normalize_url(once) == once


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a/b/c/./../../g", "/a/g"),
        ("mid/content=5/../6", "mid/6"),
        ("/../a", "/a"),
        ("/a/.", "/a/"),
        ("", ""),
    ],
)
def test_remove_dot_segments(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


@pytest.mark.parametrize(
    ("url", "root", "expected"),
    [
        ("https://help.example/a", "https://help.example/", True),
        ("http://help.example/a", "https://help.example/", True),
        ("https://www.help.example/a", "https://help.example/", True),
        ("https://help.example/a", "https://www.help.example/", True),
        ("https://HELP.example/a", "https://help.example/", True),
        ("https://other.example/a", "https://help.example/", False),
        ("https://sub.help.example/a", "https://help.example/", False),
        ("https://help.example:8443/a", "https://help.example/", False),
        ("https://help.example:8443/a", "https://help.example:8443/", True),
        ("mailto:x@help.example", "https://help.example/", False),
    ],
)
def test_same_site(url: str, root: str, expected: bool) -> None:
    assert same_site(url, root) is expected


def _scope(
    root: str, include: list[str] | None = None, exclude: list[str] | None = None
) -> CrawlScope:
    return CrawlScope(root_url=root, include=include or [], exclude=exclude or [])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://help.example/docs/", True),
        ("https://help.example/docs/account/reset", True),
        ("https://www.help.example/docs/billing", True),
        ("http://help.example/docs/billing", True),
        ("https://help.example/blog/post", False),
        ("https://help.example/docsearch", False),
        ("https://help.example/", False),
        ("https://elsewhere.example/docs/", False),
    ],
)
def test_in_scope_stays_under_the_root_directory(url: str, expected: bool) -> None:
    assert in_scope(url, _scope("https://help.example/docs/")) is expected


def test_in_scope_uses_the_directory_of_a_root_page() -> None:
    scope = _scope("https://help.example/docs/index.html")
    assert in_scope("https://help.example/docs/faq.html", scope)
    assert not in_scope("https://help.example/other/faq.html", scope)


def test_in_scope_include_globs_limit_the_crawl() -> None:
    scope = _scope("https://help.example/", include=["/docs/*", "*/guides/*"])
    assert in_scope("https://help.example/docs/a", scope)
    assert in_scope("https://help.example/en/guides/b", scope)
    assert not in_scope("https://help.example/blog/c", scope)


def test_in_scope_exclude_wins_over_include() -> None:
    scope = _scope("https://help.example/", include=["/docs/*"], exclude=["/docs/archive/*"])
    assert in_scope("https://help.example/docs/current", scope)
    assert not in_scope("https://help.example/docs/archive/2019", scope)


def test_in_scope_globs_also_match_the_full_url() -> None:
    scope = _scope("https://help.example/", exclude=["*?print=1", "*.pdf"])
    assert not in_scope("https://help.example/docs/a?print=1", scope)
    assert not in_scope("https://help.example/manual.pdf", scope)
    assert in_scope("https://help.example/docs/a?print=0", scope)
