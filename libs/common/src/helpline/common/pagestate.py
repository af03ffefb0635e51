"""What is remembered of each indexed page (the `pages` bucket), for incremental re-scrapes.

The scraper reads it to make a conditional GET and to know a page was indexed before; the
embedder writes it once the page's chunks are in the index, so a page that never made it
into the index is fetched in full next time.
"""

from __future__ import annotations

import contextlib

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from helpline.common.bus import kv_get
from helpline.common.messages import PageState, derived_id


def page_key(brand: str, url: str) -> str:
    """The bucket key of a brand's page, by the URL it was requested as."""
    return derived_id("page", brand, url)


async def load_page_state(kv: KeyValue, key: str) -> PageState | None:
    """The remembered state, or None if the page was never indexed (or is gone)."""
    current = await kv_get(kv, key)
    if current is None:
        return None
    try:
        return PageState.model_validate_json(current[0])
    except ValueError:
        return None


async def save_page_state(kv: KeyValue, key: str, state: PageState | None) -> None:
    """Remember the page's state; None forgets it."""
    if state is not None:
        await kv.put(key, state.model_dump_json().encode())
        return
    with contextlib.suppress(KeyNotFoundError):
        await kv.delete(key)
