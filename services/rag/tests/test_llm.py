"""The language model client: citations kept only when they name a source; failures and the
breaker turn into `ModelUnavailable` with a reason."""

from __future__ import annotations

import json

import httpx
import pytest

from helpline.common.breaker import BreakerPolicy, CircuitBreaker
from helpline.rag.llm import (
    CitationFilter,
    LanguageModel,
    ModelUnavailable,
    Passage,
    fix_citations,
)

PASSAGES = [Passage("Reset", "http://d/reset", "Hold 12 s."), Passage("Wifi", "http://d/w", "x")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hold it [1].", "Hold it [1]."),
        ("Hold it [1] and [2].", "Hold it [1] and [2]."),
        ("Hold it [3].", "Hold it."),
        ("Hold it [0][2].", "Hold it [2]."),
        ("Hold it [1, 2, 7].", "Hold it [1][2]."),
        ("Hold it [2,2] now", "Hold it [2] now"),
        ("See [12] and [note].", "See and [note]."),
    ],
)
def test_fix_citations(text: str, expected: str) -> None:
    assert fix_citations(text, 2) == expected


def model(handler: httpx.MockTransport, failures: int = 2) -> LanguageModel:
    client = httpx.AsyncClient(transport=handler, base_url="http://llm.test/v1")
    breaker = CircuitBreaker("language-model", BreakerPolicy(failures=failures, open_s=60))
    return LanguageModel(client, "m", breaker, timeout_s=1.0, max_tokens=50)


def reply(content: object) -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"message": {"content": content}}]})


async def test_answer_posts_chat_completion_and_fixes_markers() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return reply("Hold the button for 12 seconds [1][5].")

    llm = model(httpx.MockTransport(handle))
    assert await llm.answer("how to reset?", PASSAGES) == "Hold the button for 12 seconds [1]."
    assert str(seen[0].url) == "http://llm.test/v1/chat/completions"
    body = json.loads(seen[0].content)
    assert body["model"] == "m"
    assert "[2] Wifi (http://d/w)" in body["messages"][1]["content"]


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(503), "HTTP 503"),
        (httpx.Response(200, text="not json"), "malformed"),
        (httpx.Response(200, json={"choices": []}), "malformed"),
        (reply("  "), "empty"),
    ],
)
async def test_bad_replies_are_unavailable(response: httpx.Response, reason: str) -> None:
    llm = model(httpx.MockTransport(lambda _request: response), failures=1)
    with pytest.raises(ModelUnavailable, match=reason):
        await llm.answer("q", PASSAGES)
    assert llm.breaker.state == "open"
    with pytest.raises(ModelUnavailable, match="circuit open"):
        await llm.answer("q", PASSAGES)


async def test_timeout_is_unavailable() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    llm = model(httpx.MockTransport(handle))
    with pytest.raises(ModelUnavailable, match="timed out"):
        await llm.answer("q", PASSAGES)
    assert llm.breaker.state == "closed"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_citation_filter_on_pieces_matches_the_whole(size: int) -> None:
    text = "  Hold it [1] for 12 s [3][2, 9]. Then [2] release [7] , done [1"
    repair = CitationFilter(2)
    pieces = [repair.feed(text[i : i + size]) for i in range(0, len(text), size)]
    pieces.append(repair.flush())
    assert "".join(pieces) == fix_citations(text, 2)
    assert fix_citations(text, 2) == "Hold it [1] for 12 s [2]. Then [2] release, done [1"
