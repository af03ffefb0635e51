"""Extractive answers: the sentences of the best passages that speak to the question, cited.

Pure functions over search hits. Hits of one page are merged into one source; the answer
is at most a few sentences, each followed by the `[n]` of the source it came from, and
`sources` is numbered to match.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from helpline.common.messages import Source
from helpline.common.vectors import Hit

NO_ANSWER = "I could not find this in the indexed documentation."
#: The longest extractive answer, in characters.
ANSWER_LIMIT = 600
MAX_SENTENCES = 3
MAX_PER_SOURCE = 2
SNIPPET_CHARS = 280
QUOTE_RELATIVE_SCORE = 0.6

_WORD = re.compile(r"[a-z0-9][a-z0-9_\-]*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "my",
        "of",
        "on",
        "or",
        "our",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "me",
        "we",
        "us",
        "should",
        "there",
        "their",
        "them",
        "they",
        "than",
        "then",
        "so",
        "not",
        "no",
        "yes",
        "has",
        "have",
        "had",
        "into",
        "about",
    ]
)


@dataclass
class _Page:
    url: str
    title: str
    score: float
    passages: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=8192)
def terms(text: str) -> frozenset[str]:
    """Content words, lower-cased, with a light plural/suffix folding (cached: the same
    passages come back for many questions)."""
    out = set()
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS or len(word) < 2:
            continue
        for suffix in ("ing", "es", "ed", "s"):
            if len(word) > len(suffix) + 3 and word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        out.add(word)
    return frozenset(out)


@functools.lru_cache(maxsize=2048)
def sentences(passage: str) -> tuple[str, ...]:
    """A passage's sentences (its heading line dropped: it is not an answer)."""
    lines = [line.strip() for line in passage.splitlines() if line.strip()]
    if len(lines) > 1 and not lines[0].endswith((".", "!", "?", ":")) and len(lines[0]) < 120:
        lines = lines[1:]
    out: list[str] = []
    for line in lines:
        out.extend(s.strip() for s in _SENTENCE_END.split(line) if len(s.strip()) > 1)
    return tuple(out)


def merge_pages(hits: list[Hit]) -> list[_Page]:
    """One entry per page, best score first, its passages in score order."""
    pages: dict[str, _Page] = {}
    for hit in sorted(hits, key=lambda h: h.score, reverse=True):
        # A PDF chunk's source is its page (`url#page=N`), so each page is cited on its own.
        url = str(hit.payload.get("source_url") or hit.payload.get("url", ""))
        page = pages.get(url)
        if page is None:
            page = pages[url] = _Page(
                url=url, title=str(hit.payload.get("title") or url), score=hit.score
            )
        page.passages.append(str(hit.payload.get("text", "")))
    return list(pages.values())


def compose(question: str, hits: list[Hit], top_k: int) -> tuple[str, list[Source]]:
    """The answer text with `[n]` markers and the numbered sources they point to."""
    pages = merge_pages(hits)[:top_k]
    if not pages:
        return NO_ANSWER, []
    wanted = terms(question)
    best_score = pages[0].score or 1.0
    candidates: list[tuple[float, int, int, str]] = []
    for index, page in enumerate(pages):
        prior = page.score / best_score
        # Beyond the best page, quote only pages nearly as close that share words with it.
        if index > 0 and prior < QUOTE_RELATIVE_SCORE:
            continue
        order = 0
        for passage in page.passages[:2]:
            for sentence in sentences(passage):
                overlap = len(wanted & terms(sentence)) / (len(wanted) or 1)
                length_penalty = 0.15 if len(sentence) < 25 else 0.0
                if index > 0 and overlap == 0:
                    order += 1
                    continue
                candidates.append(
                    (overlap + 0.6 * prior - 0.02 * order - length_penalty, index, order, sentence)
                )
                order += 1
    candidates.sort(key=lambda c: c[0], reverse=True)
    chosen: list[tuple[int, int, str]] = []
    per_source: dict[int, int] = {}
    for _score, index, order, sentence in candidates:
        if len(chosen) == MAX_SENTENCES:
            break
        if per_source.get(index, 0) >= MAX_PER_SOURCE:
            continue
        per_source[index] = per_source.get(index, 0) + 1
        chosen.append((index, order, sentence))
    chosen.sort()
    answer = (
        " ".join(f"{sentence} [{index + 1}]" for index, _order, sentence in chosen) or NO_ANSWER
    )
    snippets = {index: sentence for index, _order, sentence in reversed(chosen)}
    sources = [
        Source(
            url=page.url,
            title=page.title,
            snippet=_clip(
                snippets.get(i) or " ".join(sentences(page.passages[0])) or page.passages[0]
            ),
            score=round(page.score, 4),
        )
        for i, page in enumerate(pages)
    ]
    return answer, sources


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rsplit(" ", 1)[0] + "…"
