"""A page's extracted text as Markdown, from the blocks extraction made (no second pass).

The title is the page's `#` heading, each section heading a `##` (extraction keeps a
heading's text, not its level), lists as written, tables as pipe tables under a header
row, code fenced. What `GET /api/v1/documents/{id}` shows is exactly what was chunked.
"""

from __future__ import annotations

from helpline.common.chunking import Block, Document

#: A page's Markdown is cut past this many characters (a note says so): it travels in the
#: page's chunk batch and is kept in one KV entry.
MAX_MARKDOWN_CHARS = 200_000


def to_markdown(doc: Document) -> str:
    """`doc`'s title and blocks as Markdown."""
    parts: list[str] = [f"# {_line(doc.title)}"] if doc.title.strip() else []
    heading = ""
    page: int | None = None
    for block in doc.blocks:
        if block.page is not None and block.page != page:
            page = block.page
            parts.append(f"<!-- page {page} -->")
        if block.heading.strip() and block.heading != heading:
            heading = block.heading
            parts.append(f"## {_line(heading)}")
        parts.append(_block(block))
    text = "\n\n".join(p for p in parts if p) + "\n"
    if len(text) > MAX_MARKDOWN_CHARS:
        text = text[:MAX_MARKDOWN_CHARS] + f"\n\n<!-- cut at {MAX_MARKDOWN_CHARS} characters -->\n"
    return text


def _block(block: Block) -> str:
    text = block.text.strip()
    if block.kind == "code":
        fence = "````" if "```" in text else "```"
        return f"{fence}\n{text}\n{fence}"
    if block.kind == "table":
        rows = [[cell.strip() for cell in row.split(" | ")] for row in text.splitlines()]
        width = max(len(row) for row in rows)
        lines = ["| " + " | ".join(row + [""] * (width - len(row))) + " |" for row in rows]
        lines.insert(1, "|" + " --- |" * width)
        return "\n".join(lines)
    return text


def _line(text: str) -> str:
    return " ".join(text.split())
