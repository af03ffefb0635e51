"""Indexed documents, as the `pages` bucket remembers them (`pagestate`), listed in pages.

Listed by URL (then key), so a page keeps its place when it is fetched again; the cursor is
the last item's place (its key and URL). A source's documents are its brand's pages under its root URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from helpline.common.kvscan import kv_entries
from helpline.common.messages import (
    ChunkBatch,
    PageRemoval,
    PageState,
    RemovalReason,
    new_task_id,
    utcnow,
)
from helpline.common.pagestate import PageStates, page_state_key
from helpline.common.subjects import Bucket, Kind, Priority

if TYPE_CHECKING:
    from collections.abc import Callable

    from helpline.common.kv import Buckets


@dataclass(frozen=True)
class Document:
    id: str  # its key in the `pages` bucket
    state: PageState


@dataclass(frozen=True)
class DocumentPage:
    items: list[Document]
    next_cursor: str | None


def encode_cursor(document: Document) -> str:
    """The place after `document`: its key and URL (pass it back as it is)."""
    return f"{document.id}:{document.state.url}"


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The (url, key) a cursor stands for. Any string is a place in the order (a cursor
    not made here simply starts somewhere), so none is refused."""
    key, _, url = cursor.partition(":")
    return url, key


def under(root_url: str) -> Callable[[str], bool]:
    """Whether a URL lies under `root_url`'s folder (a crawl's own pages)."""
    folder = root_url.split("#", 1)[0].split("?", 1)[0]
    scheme_end = folder.find("://") + 3
    if "/" in folder[scheme_end:]:
        folder = folder[: folder.rindex("/") + 1]
    else:
        folder += "/"
    return lambda url: url.startswith(folder) or url == folder.rstrip("/")


async def list_documents(
    buckets: Buckets,
    *,
    keep: Callable[[PageState], bool],
    limit: int,
    cursor: str | None = None,
) -> DocumentPage:
    """The indexed pages `keep` accepts, by URL, `limit` at a time from after `cursor`."""
    after = decode_cursor(cursor) if cursor else None
    found: dict[str, Document] = {}
    async for entry in kv_entries(await buckets.get(Bucket.PAGES)):
        try:
            state = PageState.model_validate_json(entry.value)
        except ValueError:
            continue
        if keep(state):
            found[entry.key] = Document(entry.key, state)
    ordered = sorted(found.values(), key=lambda d: (d.state.url, d.id))
    if after is not None:
        ordered = [d for d in ordered if (d.state.url, d.id) > after]
    items = ordered[:limit]
    more = len(ordered) > limit
    return DocumentPage(items, encode_cursor(items[-1]) if more and items else None)


async def find_by_url(
    buckets: Buckets, url: str, keep: Callable[[PageState], bool]
) -> list[Document]:
    """The indexed pages `keep` accepts that were requested as `url` or are indexed under
    it (its canonical URL), one per brand at most, by brand."""
    found: dict[str, Document] = {}
    async for entry in kv_entries(await buckets.get(Bucket.PAGES)):
        try:
            state = PageState.model_validate_json(entry.value)
        except ValueError:
            continue
        requested = state.brand is not None and entry.key == page_state_key(state.brand, url)
        if (requested or state.url == url) and keep(state):
            brand = state.brand or ""
            # The page requested as this URL wins over another whose canonical URL it is.
            if requested or brand not in found:
                found[brand] = Document(entry.key, state)
    return [found[b] for b in sorted(found)]


async def load_document(buckets: Buckets, key: str) -> Document | None:
    """One indexed page by its id (its key in the `pages` bucket)."""
    state = await PageStates(buckets).load(key)
    return None if state is None else Document(key, state)


def removal_batch(
    document: Document,
    priority: Priority = Priority.HIGH,
    *,
    reason: RemovalReason = RemovalReason.DELETED,
    source_id: str | None = None,
) -> ChunkBatch:
    """The embed task that takes `document` out of the index: no chunks, no page state (as for
    a page that answers 404): the embedder deletes its points, state and text, and moves its
    brand's index generation. Its record keeps `reason` and `source_id` (`page.removed`)."""
    task_id = new_task_id()
    state = document.state
    return ChunkBatch(
        task_id=task_id,
        priority=priority,
        url=state.url,
        title=state.title,
        brand=state.brand or "",
        chunks=[],
        fetched_at=utcnow(),
        report_task_id=task_id,
        report_kind=Kind.EMBED,
        page_key=document.id,
        page_state=None,
        removal=PageRemoval(url=state.url, brand=state.brand, reason=reason, source_id=source_id),
    )
