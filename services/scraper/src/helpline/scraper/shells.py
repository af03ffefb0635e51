"""Whether a fetched HTML page is a client-rendered shell that only a browser can fill in.

`render=auto` asks this of every HTML page; pages it names go to the browser. A page needs
at least one script that runs (without one nothing can fill it in), and then one of:

- **thin main content**: the text of its main content (`<main>` or `[role=main]`, else
  `<article>`, else the body), without what frames every page (navigation, header,
  footer, sidebars, by tag, ARIA role or a class or id such as `navbar`, `site-footer`,
  `sidebar`), is shorter than `min_text_chars`, and does not read as finished (no
  sentence, fewer than two links: a title and a "Loading…" placeholder, not a short legal
  notice or a chapter's table of contents). A portal whose menu and footer are
  server-rendered and whose article is a placeholder is thin however long its menu is;
- **an empty app root**: the element frameworks mount into (`#root`, `#app`, `#__next`,
  `#__nuxt`, `#___gatsby`, `#q-app`, `<app-root>`, `[ng-app]`, ...) holds no text but a
  placeholder. Server-rendered apps fill it;
- **a JSON data island holding the page**: the strings of its `application/json` or
  `__NEXT_DATA__`/`__NUXT_DATA__` scripts hold more prose than the page shows (more than
  twice its main text): the page's own scripts turn that data into the page. A
  server-rendered Next or Nuxt page ships the same island, but shows its text too;
- with main content shorter than `SUBSTANTIAL_CHARS` (a frame that is not marked as one
  can pass for content) and no app root filled on the server: a `<noscript>` that asks
  for JavaScript, or an empty custom element right under `<body>` (`<my-app>`), where
  apps mount.

Everything is read from the tree as parsed, without changing it (the same tree is then
extracted), in the parsing workers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from helpline.scraper.extract import is_boilerplate

#: Main text at least this long is content, whatever the weaker signs say.
SUBSTANTIAL_CHARS = 1_000
#: An app root with at most this much text holds a placeholder ("Loading…"), not content.
PLACEHOLDER_CHARS = 64

_INVISIBLE = frozenset({"script", "style", "noscript", "template", "head"})
_MOUNT_IDS = frozenset(
    {"root", "app", "__next", "__nuxt", "___gatsby", "q-app", "svelte", "react-root",
     "app-root", "vue-app"}
)  # fmt: skip
_MOUNT_TAGS = frozenset({"app-root", "ng-view"})
_MOUNT_ATTRIBUTES = ("ng-app", "data-reactroot", "data-v-app")
# Class and id words that name the frame around the content.
_FRAME_NAMES = re.compile(
    r"(?:^|[\s_-])(?:nav|navbar|navigation|navmenu|menu|menubar|sidebar|sidenav|header|"
    r"footer|topbar|masthead|breadcrumbs?)(?:$|[\s_-])",
    re.IGNORECASE,
)
_ASKS_FOR_JAVASCRIPT = re.compile(r"\bjava\s?script\b|\bJS\b", re.IGNORECASE)
_RUNNABLE_TYPES = frozenset(
    {"", "module", "text/javascript", "application/javascript", "text/ecmascript",
     "application/ecmascript", "text/babel", "text/jsx"}
)  # fmt: skip
_ISLAND_IDS = frozenset({"__NEXT_DATA__", "__NUXT_DATA__", "__NUXT__", "__APOLLO_STATE__"})
_JSON_TYPES = frozenset({"application/json", "application/ld+json"})
# A JSON string that reads as prose: three words or more (tags of HTML in it left out).
_PROSE = re.compile(r"\S+\s+\S+\s+\S+")
_TAG = re.compile(r"<[^>]*>")
_PROSE_TAGS = frozenset({"p", "li", "dd", "td", "blockquote"})
# Five words or more, ending as a sentence does.
_SENTENCE = re.compile(r"(?:\S+\s+){4,}\S+[.!?:]$")
_PLACEHOLDER = re.compile(
    r"loading|please wait|one moment|fetching|initiali[sz]ing|java\s?script", re.IGNORECASE
)


@dataclass(frozen=True)
class Verdict:
    """What `assess` found: the main text's length when scripts could fill it, and signs of a
    client-rendered shell."""

    thin: bool = False
    signs: tuple[str, ...] = ()
    main_chars: int | None = None

    @property
    def render(self) -> bool:
        return self.thin or bool(self.signs)

    def reasons(self) -> list[str]:
        thin = [f"thin main content ({self.main_chars} characters)"] if self.thin else []
        return thin + list(self.signs)


def assess(root: Any, min_text_chars: int) -> Verdict:
    """Whether the page parsed as `root` needs a browser, and why."""
    if not any(_runnable(el) for el in root.iter("script")):
        return Verdict()
    main = main_text_chars(root)
    signs: list[str] = []
    mounts = list(_mount_roots(root))
    empty = [el for el in mounts if _text_chars(el) <= PLACEHOLDER_CHARS]
    signs += [f"empty app root {_describe(el)}" for el in empty]
    island = _island_chars(root)
    if island >= min_text_chars and island > 2 * main:
        signs.append(f"a data island with {island} characters of text")
    # A frame not marked as one passes for content: these count unless the content is
    # substantial, or the framework's root was filled on the server.
    if main < SUBSTANTIAL_CHARS and len(empty) == len(mounts):
        if any(_ASKS_FOR_JAVASCRIPT.search(el.text_content()) for el in root.iter("noscript")):
            signs.append("a <noscript> asking for JavaScript")
        signs += [
            f"empty mount point {_describe(el)}"
            for el in _empty_body_children(root)
            if el not in mounts
        ]
    thin = main < min_text_chars and not _finished(root)
    if thin:
        # Where the content was to go: an empty container with an id (`#swagger-ui`).
        signs += [
            f"empty container {_describe(el)}" for el in _empty_containers(root) if el not in mounts
        ]
    return Verdict(thin, tuple(signs), main)


def render_reasons(root: Any, min_text_chars: int) -> list[str]:
    """Why the page parsed as `root` needs a browser; empty when it does not."""
    return assess(root, min_text_chars).reasons()


def main_text_chars(root: Any) -> int:
    """Characters of the page's main content as a reader sees it, without its frame."""
    return sum(_text_chars(scope, frame=True) for scope in _main_scopes(root))


def _main_scopes(root: Any) -> list[Any]:
    scopes = root.xpath("//main | //*[@role='main']") or root.xpath("//article")
    if not scopes:
        body = root.find("body")
        scopes = [body if body is not None else root]
    # A main inside another counts once.
    return [s for s in scopes if not any(a in scopes for a in s.iterancestors())]


def _finished(root: Any) -> bool:
    """Whether the short main content reads as finished: a sentence, or links to follow (a
    legal notice, a chapter's table of contents), rather than a title and a placeholder."""
    links = 0
    for scope in _main_scopes(root):
        for el in _visible(scope):
            tag = el.tag.lower()
            if tag == "a" and el.get("href"):
                links += 1
            elif tag in _PROSE_TAGS:
                text = " ".join(el.text_content().split())
                if _SENTENCE.search(text) and not _PLACEHOLDER.search(text):
                    return True
    return links >= 2


def _visible(el: Any) -> Iterator[Any]:
    for child in el:
        if isinstance(child.tag, str) and not _hidden(child, True):
            yield child
            yield from _visible(child)


def _empty_containers(root: Any) -> Iterator[Any]:
    for scope in _main_scopes(root):
        for el in scope.iter("div", "section"):
            if el.get("id") and _text_chars(el) == 0 and not el.xpath(".//img | .//svg"):
                yield el


def _text_chars(el: Any, *, frame: bool = False) -> int:
    """Visible characters under `el`, spaces squashed; without the page's frame if `frame`."""
    return len(" ".join("".join(_texts(el, frame)).split()))


def _texts(el: Any, frame: bool) -> Iterator[str]:
    yield el.text or ""
    for child in el:
        if isinstance(child.tag, str) and not _hidden(child, frame):
            yield from _texts(child, frame)
        yield child.tail or ""


def _hidden(el: Any, frame: bool) -> bool:
    if el.tag.lower() in _INVISIBLE:
        return True
    if not frame:
        return False
    if is_boilerplate(el):
        return True
    return bool(_FRAME_NAMES.search(f"{el.get('id', '')} {el.get('class', '')}"))


def _runnable(script: Any) -> bool:
    kind = (script.get("type") or "").strip().lower()
    return kind in _RUNNABLE_TYPES and (
        bool(script.get("src")) or bool((script.text or "").strip())
    )


def _mount_roots(root: Any) -> Iterator[Any]:
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        if (
            el.get("id") in _MOUNT_IDS
            or el.tag.lower() in _MOUNT_TAGS
            or any(el.get(name) is not None for name in _MOUNT_ATTRIBUTES)
        ) and el.tag.lower() not in ("html", "body", "script", "template"):
            yield el


def _empty_body_children(root: Any) -> Iterator[Any]:
    body = root.find("body")
    for el in body if body is not None else []:
        if not isinstance(el.tag, str) or el.tag.lower() in _INVISIBLE:
            continue
        if "-" in el.tag and _text_chars(el) == 0 and not el.xpath(".//img | .//svg | .//iframe"):
            yield el


def _island_chars(root: Any) -> int:
    """Characters of prose in the page's JSON data islands."""
    total = 0
    for script in root.iter("script"):
        kind = (script.get("type") or "").strip().lower()
        if kind == "application/ld+json":
            continue  # search engines' metadata, not the page
        if kind not in _JSON_TYPES and script.get("id") not in _ISLAND_IDS:
            continue
        try:
            data = json.loads(script.text or "")
        except ValueError:
            continue
        prose = (" ".join(_TAG.sub(" ", s).split()) for s in _strings(data))
        total += sum(len(text) for text in prose if _PROSE.search(text))
    return total


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


def _describe(el: Any) -> str:
    name = el.tag.lower()
    return f"{name}#{el.get('id')}" if el.get("id") else f"<{name}>"
