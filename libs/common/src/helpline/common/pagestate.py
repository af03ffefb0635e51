"""What is remembered of each indexed page (the `pages` bucket), for incremental re-scrapes.

The scraper reads it to make a conditional GET and to know a page was indexed before; the
embedder writes it once the page's chunks are in the index, so a page that never made it
into the index is fetched in full next time.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from nats.js.errors import KeyNotFoundError

from helpline.common.kv import kv_get
from helpline.common.messages import PageState, derived_id
from helpline.common.subjects import Bucket

if TYPE_CHECKING:
    from helpline.common.kv import Buckets


def page_state_key(brand: str, url: str) -> str:
    """The bucket key of a brand's page, by the URL it was requested as."""
    return derived_id("page", brand, url)


class PageStates:
    """What is remembered of each indexed page, in the `pages` bucket."""

    def __init__(self, buckets: Buckets) -> None:
        self._buckets = buckets

    async def load(self, key: str) -> PageState | None:
        """The remembered state, or None if the page was never indexed (or is gone)."""
        current = await kv_get(await self._buckets.get(Bucket.PAGES), key)
        if current is None:
            return None
        try:
            return PageState.model_validate_json(current[0])
        except ValueError:
            return None

    async def save(self, key: str, state: PageState | None) -> None:
        """Remember the page's state; None forgets it."""
        kv = await self._buckets.get(Bucket.PAGES)
        if state is not None:
            await kv.put(key, state.model_dump_json().encode())
            return
        with contextlib.suppress(KeyNotFoundError):
            await kv.delete(key)


class PageTexts:
    """Each indexed page's extracted text as Markdown (the `texts` bucket, keyed as `pages`),
    written with the page's state by the embedder, so it is the indexed version's."""

    def __init__(self, buckets: Buckets) -> None:
        self._buckets = buckets

    async def load(self, key: str) -> str | None:
        """The page's Markdown, or None if none was kept."""
        current = await kv_get(await self._buckets.get(Bucket.TEXTS), key)
        return None if current is None else current[0].decode()

    async def save(self, key: str, markdown: str | None) -> None:
        """Keep the page's Markdown; None forgets it."""
        kv = await self._buckets.get(Bucket.TEXTS)
        if markdown is not None:
            await kv.put(key, markdown.encode())
            return
        with contextlib.suppress(KeyNotFoundError):
            await kv.delete(key)
