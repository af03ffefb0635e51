"""Turning an HTML page into its main text as (heading, paragraph) blocks, and its links."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import lxml.etree
import lxml.html
from trafilatura import bare_extraction
from trafilatura.core import determine_returnstring
from trafilatura.settings import Document as TrafilaturaDocument
from trafilatura.settings import Extractor

from helpline.common.chunking import Block, Document
from helpline.common.errors import Permanent
from helpline.scraper.urls import normalize_url

_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_DROPPED = frozenset(
    {"head", "nav", "footer", "aside", "script", "style", "noscript", "template",
     "form", "button", "select", "svg", "iframe", "dialog"}
)  # fmt: skip
_DROPPED_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search"})
_BLOCKS = frozenset(
    {"address", "article", "blockquote", "body", "dd", "details", "div", "dl", "dt",
     "figcaption", "figure", "li", "main", "ol", "p", "pre", "section", "summary", "table",
     "td", "th", "tr", "ul"}
)  # fmt: skip
# Inline elements of trafilatura's XML output; everything else there is block-level.
_XML_INLINE = frozenset({"hi", "ref", "lb", "del", "graphic", "span"})
# Widgets documentation sites wrap around the content, matched by id or class name.
_BOILERPLATE_NAMES = re.compile(
    r"cookie|consent|gdpr|\b(?:feedback|helpful|breadcrumbs?|share|social|newsletter|rating|skip-link)\b",
    re.IGNORECASE,
)


def extract(html: str, url: str) -> Document:
    """Extract the title, main-content blocks and absolute links of the page at `url`."""
    return extract_tree(parse_html(html), url)


def parse_html(html: str) -> Any:
    """The page's tree, for `extract_tree` (and anything that reads it first)."""
    try:
        return lxml.html.document_fromstring(
            html.encode("utf-8", errors="replace"), parser=_html_parser()
        )
    except (lxml.etree.LxmlError, ValueError) as exc:
        raise Permanent("could not parse page") from exc


def extract_tree(root: Any, url: str) -> Document:
    """`extract` of a tree from `parse_html`; the tree is pruned in place."""
    # One parse serves everything: links, title and canonical are read from the whole page,
    # then the same tree is pruned in place (no copy) and handed to trafilatura, which copies
    # it before changing anything.
    links = _links(root, url)
    title = _title(root)
    canonical = _canonical(root, url)
    # Pruned before trafilatura too: on short pages it falls back to dumping the whole body.
    content = _pruned(root)
    blocks = _main_blocks(content, url) or _fallback_blocks(content)
    return Document(url=url, title=title, blocks=blocks, links=links, canonical=canonical)


# Every element an `HtmlElement`, chosen in C. lxml.html's own parser picks each element's
# class in a Python callback (forms, inputs and labels get classes of their own), called every
# time Python touches an element; nothing here or in trafilatura needs those classes.
_CLASS_LOOKUP = lxml.etree.ElementDefaultClassLookup(
    element=lxml.html.HtmlElement,
    comment=lxml.html.HtmlComment,
    pi=lxml.html.HtmlProcessingInstruction,
    entity=lxml.html.HtmlEntity,
)


def _html_parser() -> lxml.etree.HTMLParser:
    """A parser per page (a parser is not shared between the threads that may extract)."""
    parser = lxml.etree.HTMLParser(encoding="utf-8")
    parser.set_element_class_lookup(_CLASS_LOOKUP)
    return parser


def _options(url: str) -> Extractor:
    return Extractor(
        output_format="xml",
        tables=True,
        comments=False,
        images=False,
        links=False,
        # Help pages are mostly lists and short steps, which the default setting drops.
        recall=True,
        with_metadata=False,
        url=url,
    )


def _main_xml(root: Any, url: str) -> str | None:
    """trafilatura's XML of the main content, as `trafilatura.extract(output_format="xml")`.

    The same two steps `extract` takes (extraction, then its XML serialisation), without the
    content fingerprint `extract` computes in between: a hash of the whole text for
    deduplicating documents, which nothing here reads and which cost a fifth of the page.
    """
    options = _options(url)
    document = bare_extraction(root, options=options)
    if document is None or not isinstance(document, TrafilaturaDocument):
        return None
    return determine_returnstring(document, options)


def _main_blocks(root: Any, url: str) -> list[Block]:
    xml = _main_xml(root, url)
    if not xml:
        return []
    try:
        doc = lxml.etree.fromstring(xml)
    except lxml.etree.LxmlError:
        return []
    main = doc.find("main")
    blocks: list[Block] = []
    heading = ""

    def visit(el: Any) -> None:
        nonlocal heading
        tag = el.tag
        if tag == "head":
            heading = _squash(_text(el))
            return
        kind = "text"
        if tag in {"p", "quote"}:
            text = _squash(_text(el))
        elif tag == "list":
            text, kind = "\n".join(_list_lines(el, 0)), "list"
        elif tag == "table":
            text = "\n".join(
                " | ".join(_squash(_text(cell)) for cell in row.iterchildren("cell"))
                for row in el.iter("row")
            )
            kind = "table"
        elif tag == "code":
            text, kind = "".join(el.itertext()).strip(), "code"
        else:
            # Short pages come back as bare text inside <main>, around inline elements.
            loose = [el.text or ""]
            for child in el.iterchildren():
                if child.tag in _XML_INLINE:
                    loose.append(" " if child.tag == "lb" else _text(child))
                else:
                    add(_squash("".join(loose)))
                    loose.clear()
                    visit(child)
                loose.append(child.tail or "")
            add(_squash("".join(loose)))
            return
        add(text, kind)

    def add(text: str, kind: str = "text") -> None:
        if text.strip():
            blocks.append(Block(heading, text, kind=kind))

    if main is not None:
        visit(main)
    return blocks


def _list_lines(list_el: Any, depth: int) -> Iterator[str]:
    ordered = list_el.get("rend") == "ol"
    for number, item in enumerate(list_el.iterchildren("item"), start=1):
        own = _squash(_text(item, skip="list"))
        if own:
            marker = f"{number}." if ordered else "-"
            yield f"{'  ' * depth}{marker} {own}"
        for sub in item.iterchildren("list"):
            yield from _list_lines(sub, depth + 1)


def _text(el: Any, skip: str | None = None) -> str:
    """Text of a trafilatura XML element, <lb/> read as a space, `skip` subtrees left out."""
    parts = [el.text or ""]
    for child in el.iterchildren():
        if child.tag == "lb":
            parts.append(" ")
        elif child.tag != skip:
            parts.append(_text(child, skip))
        parts.append(child.tail or "")
    return "".join(parts)


def _fallback_blocks(root: Any) -> list[Block]:
    body = root.find("body")
    blocks: list[Block] = []
    heading = ""
    buffer: list[str] = []

    def flush() -> None:
        text = _squash("".join(buffer))
        buffer.clear()
        if text:
            blocks.append(Block(heading, text))

    def visit(el: Any) -> None:
        nonlocal heading
        if not isinstance(el.tag, str):
            return
        tag = el.tag.lower()
        if tag in _HEADINGS:
            flush()
            heading = _squash(el.text_content())
            return
        is_block = tag in _BLOCKS
        if is_block:
            flush()
        buffer.append(" " if tag == "br" else el.text or "")
        for child in el:
            visit(child)
            buffer.append(child.tail or "")
        if is_block:
            flush()

    visit(body if body is not None else root)
    flush()
    return blocks


def _pruned(root: Any) -> Any:
    """`root` without navigation, page header and footer, sidebars, scripts and cookie banners."""
    doomed = [el for el in root.iter() if isinstance(el.tag, str) and is_boilerplate(el)]
    for el in doomed:
        # Nested matches were already removed with their ancestor.
        if el.getparent() is not None:
            el.drop_tree()
    return root


def is_boilerplate(el: Any) -> bool:
    """Whether `el` frames the content (navigation, page header and footer, sidebars, widgets)."""
    tag = el.tag.lower()
    if tag in {"html", "body"}:
        # Sites mark <body> with classes such as "cookie-consent-open" while a banner shows.
        return False
    if tag == "header":
        # An <article>'s own header holds its title; only the page header is boilerplate.
        return not any(a.tag in {"article", "main"} for a in el.iterancestors())
    if tag in _DROPPED or el.get("role") in _DROPPED_ROLES:
        return True
    if el.get("hidden") is not None or el.get("aria-hidden") == "true":
        return True
    return bool(_BOILERPLATE_NAMES.search(f"{el.get('id', '')} {el.get('class', '')}"))


def _title(root: Any) -> str:
    candidates = (
        root.xpath("string((//title)[1])"),
        root.xpath("string((//meta[@property='og:title'])[1]/@content)"),
        root.xpath("string((//h1)[1])"),
    )
    return next((t for t in map(_squash, candidates) if t), "")


def _links(root: Any, url: str) -> list[str]:
    base_href = root.xpath("string((//base[@href])[1]/@href)")
    base = (normalize_url(str(base_href), url) if base_href else None) or url
    links: dict[str, None] = {}
    for href in root.xpath("//a/@href | //area/@href"):
        link = normalize_url(str(href), base)
        if link is not None:
            links[link] = None
    return list(links)


def _canonical(root: Any, url: str) -> str | None:
    """The absolute http(s) URL of the first <link rel="canonical">, if any."""
    for link in root.xpath("//link[@rel and @href]"):
        if "canonical" in str(link.get("rel", "")).lower().split():
            return normalize_url(str(link.get("href")), url)
    return None


def _squash(text: Any) -> str:
    return " ".join(str(text).split())
