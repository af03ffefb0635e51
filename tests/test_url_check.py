"""The gateway's URL check accepts exactly what the OpenAPI document's pattern describes."""

from __future__ import annotations

import random
import re

import pytest

from helpline.gateway.schemas import URL_SCHEMA, check_http_url

ACCEPTED = [
    "http://a",
    "https://docs.example.com/guide/install.html?x=1#top",
    "https://EXAMPLE.com:99999/x",  # the scraper refuses the port, with a reason
    "http://127.0.0.1:8000/p?rev=3",  # the scraper's address guard decides
    "http://[::1]/",
    "HTTP://h/",
    "http://h#frag",
    "https://例え.jp/パス",
    "  http://h/x\n",  # a pasted line
]

REFUSED = [
    "http://host:/x",
    "http://user@host/",
    "http://user:pw@host/",
    "http://h/path with space",
    "http://h\t/",
    "ftp://h/",
    "http:///x",
    "http://:80/",
    "http:/h",
    "//h/x",
    "http://h:80:90/",
    "http://R6:0*",
    "javascript://h/%0aalert(1)",
    "\x1chttp://h/",  # whitespace to Python, not to JSON Schema
    "http://h/\x85",  # a control character
    "http://" + "a" * 2100,
]


def documented(value: str) -> bool:
    return len(value) <= URL_SCHEMA["maxLength"] and bool(re.search(URL_SCHEMA["pattern"], value))


def accepted(value: str) -> bool:
    try:
        check_http_url(value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("value", ACCEPTED)
def test_urls_people_paste_are_accepted(value: str) -> None:
    assert accepted(value)
    assert documented(value)


@pytest.mark.parametrize("value", REFUSED)
def test_urls_without_a_plain_host_are_refused(value: str) -> None:
    assert not accepted(value)
    assert not documented(value)


def test_the_check_and_the_documented_pattern_agree_on_random_urls() -> None:
    rng = random.Random(7)
    alphabet = "ab.-:/?#@[]% \t\n09AZ_~\x1c\x85\xa0é"
    both = 0
    for _ in range(20_000):
        scheme = rng.choice(["http://", "https://", "HTTP://", "ftp://", "http:/", "", " http://"])
        value = scheme + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert accepted(value) == documented(value), repr(value)
        both += accepted(value)
    assert both > 200  # enough accepted URLs to mean something


def test_a_refused_url_is_named_with_its_reason() -> None:
    with pytest.raises(ValueError, match="absolute http or https URL with a host"):
        check_http_url("http://user:pw@host/")
