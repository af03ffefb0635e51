"""Extractive answers: the quotes of the best pages that state what was asked, cited.

Pure functions over search hits. Hits of one page are merged into one source. From the
first `PAGES_QUOTED` pages, every retrieved passage is cut into quotes (`quotes.py`:
sentences, table rows, code lines, each with its heading or definition term as context;
headings, navigation and tables of contents are never quoted). Each quote is scored by
the question's words it holds, weighted by their rarity among the retrieved passages (an
IDF over the candidates, counted by substring), by the words its context adds (at half weight), by how many
names, numbers and settings it carries (the facts customers ask for), less a little for
length, for a lower-ranked page and a lower-ranked passage, and more when it names a
name (`snake_case`, `UPPER`, `camelCase`, `call(`) that several of the first
`NAME_PAGES` sources name too: the setting, function or command the candidate pages
agree on is likely what was asked for, wherever it stands in a page. The answer is then
chosen greedily: each next quote is the best after `REDUNDANCY_WEIGHT` x its word overlap
with a quote already chosen, so eight near-identical example lines do not fill it. The
quotes that fit in `ANSWER_LIMIT` characters are the answer, source by source and best
first, each followed by the `[n]` of its source; `sources` is numbered to match. How each
part was chosen, and what lost (semantic scoring of quotes with the model, windows of
neighbouring sentences, fusion and page-ranking variants), is in
bench/results/retrieval_eval.md (`bench/answer_offline.py` measures them offline).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

from helpline.common.messages import Source
from helpline.common.vectors import Hit
from helpline.rag.quotes import Quote, quotes

NO_ANSWER = "I could not find this in the indexed documentation."
#: The longest extractive answer, in characters.
ANSWER_LIMIT = 600
#: Pages whose passages may be quoted, best first.
PAGES_QUOTED = 3
#: Passages of one page considered, best first.
PASSAGES_PER_PAGE = 8
#: Beyond the best page, only pages scoring at least this share of its score are quoted.
QUOTE_RELATIVE_SCORE = 0.6
SNIPPET_CHARS = 280
#: A context longer than this is not repeated in front of a quote.
CONTEXT_CHARS = 80
# Scoring weights (tuned on bench/questions/postgresql.jsonl; see the module docstring).
CONTEXT_WEIGHT = 0.5
FACT_WEIGHT = 0.6
PAGE_RANK_PENALTY = 0.2
PASSAGE_RANK_PENALTY = 0.01
LENGTH_PENALTY_PER_300 = 0.6
SHORT_SENTENCE_PENALTY = 0.15
#: A quote naming a name that n of the first `NAME_PAGES` sources name scores this x
#: (n - 1) / (NAME_PAGES - 1) more.
RECURRING_NAME_WEIGHT = 0.4
NAME_PAGES = 5
#: A quote's score, when choosing the answer, less this x its largest word overlap (Jaccard)
#: with a quote already chosen.
REDUNDANCY_WEIGHT = 0.3
#: Below this score a quote is not worth quoting (unless it is the best there is).
MIN_SCORE = 0.1
# Done once the answer is this close to the limit.
_ROOM_LEFT = 60
# Names with underscores, upper-case words, numbers, options, calls, operators.
_FACT = re.compile(r"\b\w+_\w+\b|\b[A-Z][A-Z0-9]{2,}\b|\d|--?\w|\w\(|[<>=]{1,2}")
# Names a page may share with others: snake_case, UPPER words, camelCase, calls.
_NAME = re.compile(r"\b\w+_\w+\b|\b[A-Z][A-Z0-9_]{2,}\b|\b[a-z]+[A-Z]\w*\b|\b\w+\(")
# Words of sentences about the document rather than its subject ("This chapter explains...").
_ABOUT_THE_TEXT = re.compile(
    r"\b(?:welcome|this (?:chapter|section|page|guide|document|manual)|chapter \d+)\b",
    re.IGNORECASE,
)
ABOUT_THE_TEXT_PENALTY = 0.3

_WORD = re.compile(r"[a-z0-9][a-z0-9_\-]*")
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
    brand: str | None = None
    fetched_at: str | None = None


@dataclass(frozen=True)
class _Candidate:
    score: float
    page: int
    passage: int
    quote: Quote

    def text(self, with_context: bool = True) -> str:
        context = self.quote.context
        if with_context and context and len(context) < CONTEXT_CHARS:
            return f"{context}: {self.quote.text}"
        return self.quote.text


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


def sentences(passage: str) -> tuple[str, ...]:
    """A passage's quotable text: its sentences, table rows and code lines, no headings."""
    return tuple(q.text for q in quotes(passage))


def merge_pages(hits: list[Hit]) -> list[_Page]:
    """One entry per page, best score first, its passages in score order."""
    pages: dict[str, _Page] = {}
    for hit in sorted(hits, key=lambda h: h.score, reverse=True):
        # A PDF chunk's source is its page (`url#page=N`), so each page is cited on its own.
        url = str(hit.payload.get("source_url") or hit.payload.get("url", ""))
        page = pages.get(url)
        if page is None:
            page = pages[url] = _Page(
                url=url,
                title=str(hit.payload.get("title") or url),
                score=hit.score,
                brand=hit.payload.get("brand"),
                fetched_at=hit.payload.get("fetched_at"),
            )
        page.passages.append(str(hit.payload.get("text", "")))
    return list(pages.values())


def rarity(wanted: frozenset[str], hits: list[Hit]) -> dict[str, float]:
    """Each wanted word's IDF among the retrieved passages (missing from all: the highest).

    A passage counts as holding a word when its lower-cased text contains the word's folded
    form ("reset" in "resetting"): no passage is cut into words for this."""
    texts = [text.lower() for text in {str(hit.payload.get("text", "")) for hit in hits}]
    total = len(texts) + 1
    return {term: math.log(total / (sum(term in text for text in texts) + 0.5)) for term in wanted}


@functools.lru_cache(maxsize=8192)
def names(text: str) -> frozenset[str]:
    """The names (`_NAME`) a text holds (cached: the same passages come back)."""
    return frozenset(_NAME.findall(text))


def recurring_names(pages: list[_Page]) -> dict[str, int]:
    """Each name of the first `NAME_PAGES` pages' passages -> how many of them name it.

    A name that every one of three or more pages names is left out: a running header, a
    product's or a site's name agrees with everything and says nothing of the question."""
    considered = pages[:NAME_PAGES]
    counts: dict[str, int] = {}
    for page in considered:
        for name in frozenset().union(*(names(p) for p in page.passages)):
            counts[name] = counts.get(name, 0) + 1
    if len(considered) >= 3:
        counts = {name: n for name, n in counts.items() if n < len(considered)}
    return counts


def _agreement(quote: Quote, named: dict[str, int], span: int) -> float:
    """The share of the other first pages that name a name of the quote (its best name's)."""
    own = names(quote.text) | names(quote.context) if quote.context else names(quote.text)
    return max((named.get(name, 1) - 1 for name in own), default=0) / span


@functools.lru_cache(maxsize=16384)
def _standing(quote: Quote) -> float:
    """What a quote is worth whatever the question: the names, numbers and settings it (and
    its context) carries, less its length, and less again when it speaks of the document
    rather than its subject or is a scrap (cached: the same quotes come back)."""
    facts = min(len(_FACT.findall(f"{quote.text} {quote.context}")), 3) / 3
    score = FACT_WEIGHT * facts - LENGTH_PENALTY_PER_300 * len(quote.text) / 300
    if _ABOUT_THE_TEXT.search(quote.text):
        score -= ABOUT_THE_TEXT_PENALTY
    if quote.kind == "sentence" and len(quote.text) < 25:
        score -= SHORT_SENTENCE_PENALTY
    return score


def candidates(question: str, pages: list[_Page], hits: list[Hit]) -> list[_Candidate]:
    """Every quote of the pages that may be quoted, scored, best first."""
    wanted = terms(question)
    weight = rarity(wanted, hits)
    total = sum(weight.values()) or 1.0
    best = pages[0].score or 1.0
    named = recurring_names(pages)
    span = max(min(len(pages), NAME_PAGES) - 1, 1)
    out: list[_Candidate] = []
    for index, page in enumerate(pages[:PAGES_QUOTED]):
        if index > 0 and page.score / best < QUOTE_RELATIVE_SCORE:
            continue
        for rank, passage in enumerate(page.passages[:PASSAGES_PER_PAGE]):
            for quote in quotes(passage):
                own = wanted & terms(quote.text)
                context = (wanted & terms(quote.context)) - own if quote.context else ()
                score = (
                    sum(weight[t] for t in own) / total
                    + CONTEXT_WEIGHT * sum(weight[t] for t in context) / total
                    + _standing(quote)
                    - PAGE_RANK_PENALTY * index
                    - PASSAGE_RANK_PENALTY * rank
                    + RECURRING_NAME_WEIGHT * _agreement(quote, named, span)
                )
                out.append(_Candidate(score, index, rank, quote))
    out.sort(key=lambda c: c.score, reverse=True)
    return out


def select(ranked: list[_Candidate], limit: int = ANSWER_LIMIT) -> list[_Candidate]:
    """The best quotes that fit in `limit` characters with their markers, each next one the
    best after `REDUNDANCY_WEIGHT` x its largest word overlap with those already chosen."""
    chosen: list[_Candidate] = []
    pool = list(ranked)
    overlap = [0.0] * len(pool)  # each pooled quote's largest overlap with a chosen one
    used = 0
    while pool and used <= limit - _ROOM_LEFT:
        worth = [c.score - REDUNDANCY_WEIGHT * o for c, o in zip(pool, overlap, strict=True)]
        best = max(range(len(pool)), key=worth.__getitem__)  # the first of equals
        if worth[best] < MIN_SCORE and chosen:
            break
        candidate = pool.pop(best)
        overlap.pop(best)
        cost = len(candidate.text()) + 5  # " [n] "
        if used + cost > limit:
            continue
        chosen.append(candidate)
        used += cost
        if REDUNDANCY_WEIGHT:
            said = terms(candidate.quote.text)
            for i, other in enumerate(pool):
                heard = terms(other.quote.text)
                overlap[i] = max(overlap[i], len(said & heard) / (len(said | heard) or 1))
    return chosen


def compose(question: str, hits: list[Hit], top_k: int) -> tuple[str, list[Source]]:
    """The answer text with `[n]` markers and the numbered sources they point to."""
    pages = merge_pages(hits)[:top_k]
    if not pages:
        return NO_ANSWER, []
    # Source by source, the best quote of each first.
    chosen = sorted(select(candidates(question, pages, hits)), key=lambda c: (c.page, -c.score))
    parts: list[str] = []
    previous: tuple[int, str] | None = None
    for candidate in chosen:
        # A context is said once for the quotes under it.
        fresh = previous != (candidate.page, candidate.quote.context)
        previous = (candidate.page, candidate.quote.context)
        parts.append(f"{candidate.text(with_context=fresh)} [{candidate.page + 1}]")
    answer = _clip(" ".join(parts), ANSWER_LIMIT) if parts else NO_ANSWER
    snippets: dict[int, str] = {}
    for candidate in chosen:
        snippets.setdefault(candidate.page, candidate.quote.text)
    sources = [
        Source(
            url=page.url,
            title=page.title,
            snippet=_clip(
                snippets.get(i) or " ".join(sentences(page.passages[0])) or page.passages[0]
            ),
            score=round(page.score, 4),
            brand=page.brand,
            fetched_at=page.fetched_at,  # ISO text, parsed by the model
        )
        for i, page in enumerate(pages)
    ]
    return answer, sources


def _clip(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"
