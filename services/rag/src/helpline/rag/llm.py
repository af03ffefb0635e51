"""Generated answers from an OpenAI-compatible chat completions endpoint, behind a breaker.

The model sees the retrieved pages numbered like the response's `sources` and must cite
them as `[n]`; markers that point at no source are dropped from its answer. Any failure
(connection, timeout, HTTP error, a malformed reply, the breaker open) raises
`ModelUnavailable` with a short reason, and the caller answers extractively instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from helpline.common.breaker import CircuitBreaker
from helpline.common.errors import Deferred

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


def fix_citations(text: str, sources: int) -> str:
    """Keep `[n]` markers with 1 <= n <= sources (`[1, 2]` becomes `[1][2]`); drop the rest."""

    def replace(match: re.Match[str]) -> str:
        numbers = [int(n) for n in match.group(1).split(",")]
        kept = [n for n in dict.fromkeys(numbers) if 1 <= n <= sources]
        return "".join(f"[{n}]" for n in kept)

    fixed = _CITATION.sub(replace, text)
    fixed = _SPACE_BEFORE_PUNCT.sub(r"\1", fixed)
    return _SPACES.sub(" ", fixed).strip()


def prompt(question: str, passages: list[Passage]) -> str:
    blocks = [
        f"[{i}] {p.title} ({p.url})\n{p.text[:PASSAGE_CHARS]}" for i, p in enumerate(passages, 1)
    ]
    return "Passages:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}"


class LanguageModel:
    """One endpoint and model; `answer` goes through the breaker and a timeout."""

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

    async def answer(
        self, question: str, passages: list[Passage], *, timeout_s: float | None = None
    ) -> str:
        """The model's answer with only valid `[n]` markers; `ModelUnavailable` otherwise."""
        try:
            self.breaker.before_call()
        except Deferred as exc:
            raise ModelUnavailable("language model circuit open") from exc
        wait = min(self.timeout_s, timeout_s) if timeout_s is not None else self.timeout_s
        try:
            text = await self._complete(question, passages, max(wait, 0.05))
        except ModelUnavailable:
            self.breaker.failed()
            raise
        self.breaker.succeeded()
        return fix_citations(text, len(passages))

    async def _complete(self, question: str, passages: list[Passage], timeout_s: float) -> str:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt(question, passages)},
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        try:
            response = await self.client.post("chat/completions", json=body, timeout=timeout_s)
        except httpx.TimeoutException as exc:
            raise ModelUnavailable(f"language model timed out after {timeout_s:g}s") from exc
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"language model unreachable ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise ModelUnavailable(f"language model answered HTTP {response.status_code}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModelUnavailable("language model reply was malformed") from exc
        if not isinstance(content, str) or not content.strip():
            raise ModelUnavailable("language model reply was empty")
        return content
