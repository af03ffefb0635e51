"""A crawl's shared state in the `crawls` bucket: which URLs were claimed and how many.

The scraper replicas claim pages here (so a page is scraped once per crawl, and
`max_pages` holds across replicas); the gateway's tracker reads the page count to know
when every page of a crawl has finished.
"""

from __future__ import annotations

import hashlib

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from helpline.common.bus import kv_get


def _count_key(parent_id: str) -> str:
    return f"{parent_id}.pages"


def _url_key(parent_id: str, url: str) -> str:
    return f"{parent_id}.url.{hashlib.sha256(url.encode()).hexdigest()[:40]}"


async def claim_page(kv: KeyValue, parent_id: str, url: str, max_pages: int) -> bool:
    """Claim `url` for this crawl; False if already claimed or the page budget is spent."""
    try:
        await kv.create(_url_key(parent_id, url), b"1")
    except KeyWrongLastSequenceError:
        return False
    while True:
        current = await kv_get(kv, _count_key(parent_id))
        count = int(current[0]) if current else 0
        if count >= max_pages:
            return False
        try:
            if current is None:
                await kv.create(_count_key(parent_id), str(count + 1).encode())
            else:
                await kv.update(_count_key(parent_id), str(count + 1).encode(), last=current[1])
        except KeyWrongLastSequenceError:
            continue
        return True


async def pages_claimed(kv: KeyValue, parent_id: str) -> int:
    """How many pages this crawl has claimed so far."""
    current = await kv_get(kv, _count_key(parent_id))
    return int(current[0]) if current else 0
