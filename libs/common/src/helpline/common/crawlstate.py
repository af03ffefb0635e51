"""Crawls' and batches' shared state in the `crawls` bucket.

Crawls: which URLs were claimed and how many. Batches: who is fetching now and when the
next fetch may start, so `max_concurrent` and `delay_ms` hold across every replica.
Parents (crawls, batches): the outcome of every child that finished, written once per
child (`mark_finished`), the ledger a parent's progress is counted from; and which parents
are still open (`mark_open`), for the maintenance check that finds one left behind.

The scraper replicas claim pages here (so a page is scraped once per crawl, and
`max_pages` holds across replicas); the gateway's tracker reads the page count to know
when every page of a crawl has finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from helpline.common.kv import kv_create, kv_get
from helpline.common.kvscan import kv_entries
from helpline.common.messages import BatchLimits
from helpline.common.subjects import Bucket

if TYPE_CHECKING:
    from helpline.common.kv import Buckets


def _count_key(parent_id: str) -> str:
    return f"{parent_id}.pages"


def _url_key(parent_id: str, url: str) -> str:
    return f"{parent_id}.url.{hashlib.sha256(url.encode()).hexdigest()[:40]}"


def _batch_key(parent_id: str) -> str:
    return f"{parent_id}.gate"


def _finished_key(parent_id: str, child_id: str) -> str:
    return f"{parent_id}.done.{child_id}"


@dataclass(frozen=True)
class Tally:
    """What a parent's finished children add up to; `by_status`: how many ended in each
    terminal status (succeeded, failed, expired, cancelled)."""

    done: int = 0
    ok: int = 0
    failed: int = 0
    chunks: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


def _open_key(parent_id: str) -> str:
    return f"open.{parent_id}"


class CrawlLedger:
    """Crawls' and batches' shared state, in the `crawls` bucket."""

    def __init__(self, buckets: Buckets) -> None:
        self._buckets = buckets

    async def _kv(self) -> KeyValue:
        return await self._buckets.get(Bucket.CRAWLS)

    async def claim_page(self, parent_id: str, url: str, max_pages: int, claimer: str) -> bool:
        """Claim `url` for this crawl on behalf of `claimer` (the page or crawl that found it).

        False if another claimed it or the page budget is spent. True if this call claimed it,
        or if `claimer` itself claimed it on an earlier attempt that may have died before
        publishing the page: publishing it again is harmless (the page's id is derived from
        the crawl and the URL), never publishing it would leave the crawl waiting for it.
        """
        kv = await self._kv()
        key = _url_key(parent_id, url)
        try:
            await kv_create(kv, key, claimer.encode())
        except KeyWrongLastSequenceError:
            current = await kv_get(kv, key)
            return current is not None and current[0] == claimer.encode()
        while True:
            current = await kv_get(kv, _count_key(parent_id))
            count = int(current[0]) if current else 0
            if count >= max_pages:
                await kv.put(key, b"")  # over budget: nobody's claim, not even on a retry
                return False
            try:
                if current is None:
                    await kv_create(kv, _count_key(parent_id), str(count + 1).encode())
                else:
                    await kv.update(_count_key(parent_id), str(count + 1).encode(), last=current[1])
            except KeyWrongLastSequenceError:
                continue
            return True

    async def pages_claimed(self, parent_id: str) -> int:
        """How many pages this crawl has claimed so far."""
        kv = await self._kv()
        current = await kv_get(kv, _count_key(parent_id))
        return int(current[0]) if current else 0

    async def enter_batch_gate(
        self, parent_id: str, task_id: str, limits: BatchLimits, lease_s: float, now: float
    ) -> float:
        """Take a fetch slot of the batch; returns 0, or the seconds to wait before trying again.

        Slots are leased: one held by a replica that died is free again after `lease_s`.
        """
        kv = await self._kv()
        while True:
            current = await kv_get(kv, _batch_key(parent_id))
            state: dict[str, Any] = (
                json.loads(current[0]) if current else {"holders": {}, "next_at": 0.0}
            )
            holders = {
                t: at for t, at in state["holders"].items() if now - at < lease_s and t != task_id
            }
            if len(holders) >= limits.max_concurrent:
                return 0.2
            if now < state["next_at"]:
                return float(state["next_at"]) - now
            holders[task_id] = now
            new = json.dumps({"holders": holders, "next_at": now + limits.delay_ms / 1000}).encode()
            try:
                if current is None:
                    await kv_create(kv, _batch_key(parent_id), new)
                else:
                    await kv.update(_batch_key(parent_id), new, last=current[1])
            except KeyWrongLastSequenceError:
                continue
            return 0.0

    async def leave_batch_gate(self, parent_id: str, task_id: str) -> None:
        """Give the slot back."""
        kv = await self._kv()
        while True:
            current = await kv_get(kv, _batch_key(parent_id))
            if current is None:
                return
            state = json.loads(current[0])
            if task_id not in state["holders"]:
                return
            del state["holders"][task_id]
            try:
                await kv.update(_batch_key(parent_id), json.dumps(state).encode(), last=current[1])
            except KeyWrongLastSequenceError:
                continue
            return

    async def mark_finished(
        self, parent_id: str, child_id: str, *, ok: bool, chunks: int, status: str | None = None
    ) -> bool:
        """Write a finished child's outcome (and terminal status) once; True only for the
        call that wrote it."""
        kv = await self._kv()
        outcome: dict[str, Any] = {"ok": ok, "chunks": chunks}
        if status is not None:
            outcome["status"] = status
        try:
            await kv_create(kv, _finished_key(parent_id, child_id), json.dumps(outcome).encode())
        except KeyWrongLastSequenceError:
            return False
        return True

    async def tally(self, parent_id: str) -> Tally:
        """Every finished child of a parent, summed from the ledger."""
        kv = await self._kv()
        done = ok = chunks = 0
        by_status: dict[str, int] = {}
        async for entry in kv_entries(kv, _finished_key(parent_id, "*")):
            outcome = json.loads(entry.value)
            done += 1
            ok += bool(outcome.get("ok"))
            chunks += int(outcome.get("chunks", 0))
            # Written before statuses were kept: succeeded or failed, as `ok` says.
            status = outcome.get("status") or ("succeeded" if outcome.get("ok") else "failed")
            by_status[status] = by_status.get(status, 0) + 1
        return Tally(done=done, ok=ok, failed=done - ok, chunks=chunks, by_status=by_status)

    async def mark_open(self, parent_id: str, now: float) -> None:
        """List a parent as open (its children may still finish) from `now` on."""
        kv = await self._kv()
        await kv.put(_open_key(parent_id), json.dumps({"since": now}).encode())

    async def mark_closed(self, parent_id: str) -> None:
        """A parent that finished is no longer checked."""
        kv = await self._kv()
        with contextlib.suppress(Exception):
            await kv.purge(_open_key(parent_id))

    async def open_parents(self) -> dict[str, tuple[dict[str, Any], int]]:
        """Every open parent: what the last check noted of it, and that note's revision."""
        kv = await self._kv()
        return {
            entry.key.split(".", 1)[1]: (json.loads(entry.value), entry.revision)
            async for entry in kv_entries(kv, _open_key("*"))
            if entry.value
        }

    async def note_open(self, parent_id: str, note: dict[str, Any], last: int) -> None:
        """Keep what a check saw of an open parent, unless the parent closed meanwhile."""
        kv = await self._kv()
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.update(_open_key(parent_id), json.dumps(note).encode(), last=last)
