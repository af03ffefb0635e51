"""Cutting a document into self-describing chunks sized for embedding and retrieval.

Shared by the scraper (pages) and the gateway (free text sent to POST /api/v1/embed).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from itertools import groupby

from helpline.common.messages import Chunk

# After a digit, "." is more often a list number or version ("1. Open", "v2. ") than an end.
_SENTENCE_END = re.compile(r"(?<=[^\d\s][.!?…。\uff01\uff1f])\s+")
_PARAGRAPH = "\n\n"


@dataclass(frozen=True)
class Block:
    """One paragraph (or list, table, code sample) and the nearest heading above it.

    `page` is the PDF page it is printed on (1-based); None for web pages. `kind` (text,
    list, table or code) only shapes the page's Markdown: chunks read every kind alike.
    """

    heading: str
    text: str
    page: int | None = None
    kind: str = field(default="text", compare=False)


@dataclass(frozen=True)
class Document:
    """A page's main content, in reading order, and every link found anywhere on it."""

    url: str
    title: str
    blocks: list[Block]
    links: list[str]
    # The page's <link rel="canonical">, absolute, when it has one.
    canonical: str | None = None


def text_document(text: str, *, url: str = "", title: str = "") -> Document:
    """Plain text as a document: paragraphs split on blank lines, no headings, no links."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return Document(url=url, title=title, blocks=[Block("", p) for p in paragraphs if p], links=[])


@dataclass(frozen=True)
class _Piece:
    """A paragraph, or a run of sentences of one; `joiner` goes before it inside a chunk."""

    text: str
    joiner: str


def chunk_document(doc: Document, max_chars: int = 700, overlap_chars: int = 100) -> list[Chunk]:
    """Split `doc` into chunks of at most `max_chars`, each starting with its section heading."""
    if max_chars <= 0 or not 0 <= overlap_chars < max_chars:
        raise ValueError("need max_chars > 0 and 0 <= overlap_chars < max_chars")
    texts: list[tuple[str, str, int | None]] = []
    # A chunk never spans two PDF pages, so each can be cited with its page.
    for (heading, page), blocks in groupby(doc.blocks, key=lambda b: (b.heading.strip(), b.page)):
        paragraphs = [b.text.strip() for b in blocks if b.text.strip()]
        if not paragraphs:
            continue
        # A heading longer than a quarter of the chunk would crowd out the text it labels.
        heading_line = _truncate(heading, max_chars // 4)
        budget = max_chars - (len(heading_line) + 1 if heading_line else 0)
        for body in _pack(paragraphs, budget, overlap_chars):
            texts.append((heading_line, f"{heading_line}\n{body}" if heading_line else body, page))
    return [
        Chunk(
            text=text,
            position=position,
            heading=heading,
            page=page,
            content_hash=_hash(text, page),
        )
        for position, (heading, text, page) in enumerate(texts)
    ]


def content_hash(chunks: list[Chunk]) -> str:
    """A page's content hash: equal exactly when its chunks (text, page, order) are equal."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk.content_hash.encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


def _hash(text: str, page: int | None) -> str:
    # A paragraph that moves to another page must be stored again: its citation changed.
    key = text if page is None else f"{page}\x1f{text}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _pack(paragraphs: list[str], budget: int, overlap_chars: int) -> list[str]:
    pieces = [piece for p in paragraphs for piece in _pieces(p, budget)]
    bodies: list[str] = []
    body = ""
    for piece in pieces:
        if not body:
            body = piece.text
        elif len(body) + len(piece.joiner) + len(piece.text) <= budget:
            body += piece.joiner + piece.text
        else:
            bodies.append(body)
            overlap = _tail(body, overlap_chars)
            fits = len(overlap) + len(piece.joiner) + len(piece.text) <= budget
            body = overlap + piece.joiner + piece.text if overlap and fits else piece.text
    if body:
        bodies.append(body)
    return bodies


def _pieces(paragraph: str, budget: int) -> list[_Piece]:
    """The paragraph whole if it fits, else its lines, else sentences, else hard splits."""
    if len(paragraph) <= budget:
        return [_Piece(paragraph, _PARAGRAPH)]
    pieces: list[_Piece] = []
    for line in paragraph.split("\n"):
        joiner = "\n" if pieces else _PARAGRAPH
        if len(line) <= budget:
            pieces.append(_Piece(line, joiner))
            continue
        for sentence in _sentences(line):
            for part in _hard_split(sentence, budget):
                pieces.append(_Piece(part, joiner))
                joiner = " "
    return [p for p in pieces if p.text.strip()]


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s]


def _hard_split(text: str, budget: int) -> list[str]:
    parts: list[str] = []
    while len(text) > budget:
        cut = text.rfind(" ", 0, budget + 1)
        if cut <= 0:
            cut = budget
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts


def _tail(body: str, overlap_chars: int) -> str:
    """The last whole sentences of `body` that fit in `overlap_chars`."""
    if overlap_chars <= 0:
        return ""
    last_paragraph = body.rsplit(_PARAGRAPH, 1)[-1]
    tail: list[str] = []
    size = 0
    for sentence in reversed(_sentences(last_paragraph)):
        size += len(sentence) + (1 if tail else 0)
        if size > overlap_chars:
            break
        tail.insert(0, sentence)
    return " ".join(tail)


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…" if limit > 1 else ""
