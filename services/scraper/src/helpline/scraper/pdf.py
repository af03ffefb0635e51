"""Turning a PDF manual into blocks that remember their page, so answers cite `url#page=N`."""

from __future__ import annotations

import io
import logging
import re

from pypdf import PdfReader
from pypdf.errors import PyPdfError

from helpline.common.chunking import Block, Document
from helpline.common.errors import Permanent

MAX_PAGES = 2_000
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# pypdf reports every odd construct of real-world PDFs at WARNING; none of them stop us.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def extract_pdf(body: bytes, url: str) -> Document:
    """Each page's text as paragraphs tagged with their 1-based page number."""
    try:
        reader = PdfReader(io.BytesIO(body))
        if reader.is_encrypted:
            # Many manuals are "encrypted" with an empty user password only to stop editing.
            reader.decrypt("")
        title = _title(reader)
        blocks: list[Block] = []
        for number, page in enumerate(reader.pages, start=1):
            if number > MAX_PAGES:
                break
            for paragraph in _paragraphs(page.extract_text() or ""):
                blocks.append(Block(heading="", text=paragraph, page=number))
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Permanent("could not read the PDF") from exc
    if not blocks:
        raise Permanent("the PDF has no extractable text (scanned pages are not read)")
    return Document(url=url, title=title or _first_line(blocks), blocks=blocks, links=[])


def _paragraphs(text: str) -> list[str]:
    """Paragraphs on a page: blank lines separate them; wrapped lines are joined."""
    return [p for p in (" ".join(part.split()) for part in _PARAGRAPH_BREAK.split(text)) if p]


def _title(reader: PdfReader) -> str:
    metadata = reader.metadata
    title = metadata.title if metadata is not None else None
    return " ".join(str(title).split()) if title else ""


def _first_line(blocks: list[Block]) -> str:
    first = blocks[0].text
    return first[:80].rsplit(" ", 1)[0] if len(first) > 80 else first
