"""The gateway's URL check: its fast path accepts only what the full check accepts."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from helpline.gateway.schemas import _PLAIN_HTTP_URL, _check_url_parts, check_http_url

TRICKY = [
    "http://a",
    "https://docs.example.com/guide/install.html?x=1#top",
    "https://EXAMPLE.com:99999/x",
    "http://127.0.0.1:8000/p?rev=3",
    "http://-/",
    "http://host:/x",
    "http://user@host/",
    "http://user:pw@host/",
    "http://[::1]/",
    "http://h/path with space",
    "http://h\t/",
    "HTTP://h/",
    "ftp://h/",
    "http:///x",
    "http://:80/",
    "http:/h",
    "//h/x",
    "http://h:80:90/",
    "http://h#frag",
    "javascript://h/%0aalert(1)",
    "http://" + "a" * 2100,
]


def outcome(check: Callable[[str], str], value: str) -> str:
    try:
        return check(value)
    except ValueError as exc:
        return f"refused: {exc}"


@pytest.mark.parametrize("value", TRICKY)
def test_the_fast_path_agrees_with_the_full_check(value: str) -> None:
    assert outcome(check_http_url, value) == outcome(_check_url_parts, value.strip())


def test_the_fast_path_agrees_on_random_urls() -> None:
    rng = random.Random(7)
    alphabet = "ab.-:/?#@[]% \t09AZ_~"
    fast = 0
    for _ in range(20_000):
        scheme = rng.choice(["http://", "https://", "HTTP://", "ftp://", "http:/", ""])
        value = scheme + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        if _PLAIN_HTTP_URL.fullmatch(value.strip()):
            fast += 1
        assert outcome(check_http_url, value) == outcome(_check_url_parts, value.strip()), value
    assert fast > 200  # the fast path was taken often enough to mean something


def test_the_check_refuses_with_a_reason() -> None:
    with pytest.raises(ValueError, match="http or https"):
        check_http_url("ftp://h/")
    with pytest.raises(ValueError, match="host name"):
        check_http_url("http:///x")
    with pytest.raises(ValueError, match="2048"):
        check_http_url("http://h/" + "a" * 2100)
