"""Generated answers from an OpenAI-compatible chat completions endpoint, behind a breaker.

The model sees the retrieved pages numbered like the response's `sources` and must cite
them as `[n]`; markers that point at no source are dropped from its answer. Any failure
(connection, timeout, HTTP error, a malformed reply, the breaker open) raises
`ModelUnavailable` with a short reason, and the caller answers extractively instead.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from helpline.common.breaker import CircuitBreaker
from helpline.common.errors import Deferred
from helpline.common.observability import span

_tracer = trace.get_tracer("helpline.rag")

PASSAGE_CHARS = 1500
SYSTEM_PROMPT = (
    "You answer customer support questions using only the numbered documentation passages "
    "given. Cite the passage each statement comes from with its number in square brackets, "
    "like [1]. If the passages do not contain the answer, say that you could not find it in "
    "the documentation. Be concise: at most a few sentences."
)

_CITATION = re.compile(r"\[(\s*\d+\s*(?:,\s*\d+\s*)*)\]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_SPACES = re.compile(r"[ \t]{2,}")


class ModelUnavailable(Exception):
    """The language model gave no usable answer; the message says why."""


@dataclass(frozen=True)
class Passage:
    title: str
    url: str
    text: str


class CitationFilter:
    """Repairs `[n]` markers in text that arrives in pieces (a streamed answer).

    A marker is kept when 1 <= n <= sources (`[1, 2]` becomes `[1][2]`) and dropped
    otherwise, with the space it leaves before punctuation. Text that could still become a
    marker (an open `[`) or whitespace that may precede a dropped one is held back until the
    next piece decides it, so the pieces released, joined, are the repaired answer.
    """

    MAX_MARKER = 24

    def __init__(self, sources: int) -> None:
        self.sources = sources
        self._held = ""
        self._started = False

    def feed(self, text: str) -> str:
        """Take a piece; return the text that is now final."""
        held = self._held + text
        cut = len(held)
        opening = held.rfind("[")
        if opening != -1 and "]" not in held[opening:] and cut - opening <= self.MAX_MARKER:
            cut = opening
        while cut > 0 and held[cut - 1].isspace():
            cut -= 1
        ready = self._clean(held[:cut])
        final = ready.rstrip()
        # A dropped marker can leave whitespace at the end: it waits like any other.
        self._held = ready[len(final) :] + held[cut:]
        return final

    def flush(self) -> str:
        """The rest, at the end of the answer."""
        rest, self._held = self._held, ""
        return self._clean(rest).rstrip()

    def _clean(self, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            numbers = [int(n) for n in match.group(1).split(",")]
            kept = [n for n in dict.fromkeys(numbers) if 1 <= n <= self.sources]
            return "".join(f"[{n}]" for n in kept)

        text = _SPACES.sub(" ", _SPACE_BEFORE_PUNCT.sub(r"\1", _CITATION.sub(replace, text)))
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        return text


def fix_citations(text: str, sources: int) -> str:
    """Keep `[n]` markers with 1 <= n <= sources (`[1, 2]` becomes `[1][2]`); drop the rest."""
    repair = CitationFilter(sources)
    return (repair.feed(text) + repair.flush()).strip()


def prompt(question: str, passages: list[Passage]) -> str:
    blocks = [
        f"[{i}] {p.title} ({p.url})\n{p.text[:PASSAGE_CHARS]}" for i, p in enumerate(passages, 1)
    ]
    return "Passages:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}"


class LanguageModel:
    """One endpoint and model; every call goes through the breaker and a timeout."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        model: str,
        breaker: CircuitBreaker,
        *,
        timeout_s: float,
        max_tokens: int,
    ) -> None:
        self.client = client
        self.model = model
        self.breaker = breaker
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens

    def traced(self, passages: int, *, stream: bool) -> AbstractContextManager[None]:
        """The span of one call (semantic conventions for generative AI; no prompt, no
        question, no answer in it)."""
        url = self.client.base_url
        attributes: dict[str, str | int | float | bool] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": self.model,
            "gen_ai.request.max_tokens": self.max_tokens,
            "gen_ai.request.temperature": 0.0,
            "server.address": url.host,
            "helpline.llm.passages": passages,
            "helpline.llm.stream": stream,
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        return span(_tracer, f"chat {self.model}", kind=SpanKind.CLIENT, attributes=attributes)

    def _admit(self, timeout_s: float | None) -> float:
        """Pass the breaker (or raise `ModelUnavailable`); the seconds this call may take."""
        try:
            self.breaker.before_call()
        except Deferred as exc:
            raise ModelUnavailable("language model circuit open") from exc
        wait = min(self.timeout_s, timeout_s) if timeout_s is not None else self.timeout_s
        return max(wait, 0.05)

    async def answer(
        self, question: str, passages: list[Passage], *, timeout_s: float | None = None
    ) -> str:
        """The model's answer with only valid `[n]` markers; `ModelUnavailable` otherwise."""
        wait = self._admit(timeout_s)
        try:
            text = await self._complete(question, passages, wait)
        except ModelUnavailable:
            self.breaker.failed()
            raise
        self.breaker.succeeded()
        return fix_citations(text, len(passages))

    async def stream(
        self, question: str, passages: list[Passage], *, timeout_s: float | None = None
    ) -> AsyncIterator[str]:
        """The model's answer in pieces as it is generated, markers repaired on the way.

        Raises `ModelUnavailable` (before or after some pieces) when the model fails, the
        stream breaks off, or the whole answer takes longer than the timeout.
        """
        wait = self._admit(timeout_s)
        deadline = time.monotonic() + wait
        repair = CitationFilter(len(passages))
        produced = False
        try:
            async for piece in self._stream(question, passages, wait):
                text = repair.feed(piece)
                if text:
                    produced = True
                    yield text
                if time.monotonic() > deadline:
                    raise ModelUnavailable(f"language model timed out after {wait:g}s")
            rest = repair.flush()
            if rest:
                produced = True
                yield rest
            if not produced:
                raise ModelUnavailable("language model reply was empty")
        except ModelUnavailable:
            self.breaker.failed()
            raise
        self.breaker.succeeded()

    def _body(self, question: str, passages: list[Passage], stream: bool) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt(question, passages)},
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": stream,
        }

    async def _complete(self, question: str, passages: list[Passage], timeout_s: float) -> str:
        body = self._body(question, passages, stream=False)
        try:
            response = await self.client.post("chat/completions", json=body, timeout=timeout_s)
        except httpx.TimeoutException as exc:
            raise ModelUnavailable(f"language model timed out after {timeout_s:g}s") from exc
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"language model unreachable ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise ModelUnavailable(f"language model answered HTTP {response.status_code}")
        try:
            reply = response.json()
            content = reply["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModelUnavailable("language model reply was malformed") from exc
        _note_usage(reply)
        if not isinstance(content, str) or not content.strip():
            raise ModelUnavailable("language model reply was empty")
        return content

    async def _stream(
        self, question: str, passages: list[Passage], timeout_s: float
    ) -> AsyncIterator[str]:
        """The content pieces of an OpenAI-style stream (`data: {...}` lines, `data: [DONE]`)."""
        body = self._body(question, passages, stream=True)
        try:
            async with self.client.stream(
                "POST", "chat/completions", json=body, timeout=timeout_s
            ) as response:
                if response.status_code != 200:
                    raise ModelUnavailable(f"language model answered HTTP {response.status_code}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    piece = _delta_content(data)
                    if piece:
                        yield piece
        except httpx.TimeoutException as exc:
            raise ModelUnavailable(f"language model timed out after {timeout_s:g}s") from exc
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"language model unreachable ({type(exc).__name__})") from exc
        raise ModelUnavailable("language model stream broke off")


def _note_usage(reply: Any) -> None:
    """The reply's model and token counts on the call's span, where the reply gives them."""
    current = trace.get_current_span()
    if not current.is_recording() or not isinstance(reply, dict):
        return
    if isinstance(reply.get("model"), str):
        current.set_attribute("gen_ai.response.model", reply["model"])
    usage = reply.get("usage")
    if isinstance(usage, dict):
        for field, attribute in (
            ("prompt_tokens", "gen_ai.usage.input_tokens"),
            ("completion_tokens", "gen_ai.usage.output_tokens"),
        ):
            if isinstance(usage.get(field), int):
                current.set_attribute(attribute, usage[field])


def _delta_content(data: str) -> str:
    try:
        chunk = json.loads(data)
        choices = chunk.get("choices") or []
        content = (choices[0].get("delta") or {}).get("content") if choices else ""
    except (ValueError, AttributeError, IndexError, TypeError) as exc:
        raise ModelUnavailable("language model stream was malformed") from exc
    if content is not None and not isinstance(content, str):
        raise ModelUnavailable("language model stream was malformed")
    return content or ""
