"""What in a passage can be quoted: sentences, table rows and code lines, each with its context.

A chunk's text is lines: its section heading, paragraphs, list items (`- `), definition
terms followed by their description, table rows (`a | b`), code. Headings and definition
terms are not answers, but they say what the lines below them are about (`max_connections
(integer)` above "Determines the maximum number of concurrent connections..."), so they
travel with those lines as their context. Navigation lines ("Prev Up Next", breadcrumbs)
and tables of contents (one line of numbered section titles, or a run of short link
lines) are dropped: neither is an answer nor a context.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

#: A line this long or longer is text, not a heading, whatever its last character.
HEADING_CHARS = 120
#: This many short lines in a row are a menu or a table of contents, not headings.
MENU_RUN = 3

_SENTENCE_END = re.compile(r"(?<=[^\d\s][.!?])\s+(?=[A-Z0-9\"'(\[])")
_SECTION_NUMBER = re.compile(r"(?:^|\s|\w)\d+(?:\.\d+)+\.?\s")
_BULLET = re.compile(r"^(?:[-•*·])\s+")
_CRUMB = re.compile(r"\s[\u203a\u00bb>/]\s")  # breadcrumbs: "Docs \u203a Reset"
# Ends as a statement does, starts with a prompt or an upper-case command, or calls.
_CODE = re.compile(r"[;{}=]\s*$|^\s*[A-Z]{3,}\b.*[;(]|\w\(.*\)|^\s*[$#>] ")
_NAV_WORDS = frozenset(
    [
        "prev",
        "previous",
        "next",
        "up",
        "home",
        "top",
        "contents",
        "index",
        "back",
        "skip",
        "search",
        "menu",
        "toc",
    ]
)
_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Quote:
    """One quotable piece of a passage.

    `kind` is "sentence", "row" (a table row) or "code"; `context` the heading or
    definition term it stands under ("" when none); `order` its place in the passage.
    """

    text: str
    kind: str
    context: str
    order: int


def _is_navigation(line: str) -> bool:
    if len(_SECTION_NUMBER.findall(line)) >= 2 and not line.endswith((".", "?", "!")):
        return True  # "14.4.1. Disable Autocommit 14.4.2. Use COPY": a table of contents
    if len(line) > 100:
        return False  # longer than any menu bar of eight words
    words = _WORD.findall(line)
    if not words or len(words) > 8:
        return False
    navigation = sum(word.lower() in _NAV_WORDS for word in words)
    return navigation >= max(2, len(words) // 2) or (
        bool(_CRUMB.search(line)) and not line.endswith((".", "?", "!"))
    )


def _is_code(line: str) -> bool:
    return bool(_CODE.search(line))


def _is_heading(line: str) -> bool:
    """A short line that does not end as a sentence does: a title or a definition term."""
    if len(line) >= HEADING_CHARS or " | " in line:
        return False
    if line.endswith(")") and not line.endswith(".)"):
        return len(line.split()) <= 6  # "work_mem (integer)", not a sentence's aside
    return not line.endswith((".", "!", "?", ":", ";"))


@functools.lru_cache(maxsize=4096)
def quotes(passage: str) -> tuple[Quote, ...]:
    """The passage's quotable pieces in reading order (cached: passages come back often)."""
    out: list[Quote] = []
    context = ""
    run: list[str] = []  # the short lines just read, not yet known to be headings or a menu
    for raw in passage.splitlines():
        line = _BULLET.sub("", raw.strip()).strip()
        if not line or _is_navigation(line):
            continue
        if _is_heading(line) and not _is_code(line):
            run.append(line)
            continue
        if run:
            # One or two short lines above text head it; a longer run is a menu.
            context = run[-1] if len(run) < MENU_RUN else ""
            run = []
        if " | " in line:
            out.append(Quote(line, "row", context, len(out)))
        elif _is_code(line) and len(line) < HEADING_CHARS * 2 and not line.endswith("."):
            out.append(Quote(line, "code", context, len(out)))
        else:
            for sentence in _SENTENCE_END.split(line):
                if len(sentence.strip()) > 1:
                    out.append(Quote(sentence.strip(), "sentence", context, len(out)))
    return tuple(out)
