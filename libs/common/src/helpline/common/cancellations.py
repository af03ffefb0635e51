"""Cancelled tasks, known to every replica: kept in a bucket, followed in memory."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from helpline.common.kvscan import kv_entries
from helpline.common.subjects import Bucket

if TYPE_CHECKING:
    from helpline.common.kv import Buckets


class Cancellations:
    """The ids of cancelled tasks (workers skip them or stop at a checkpoint)."""

    def __init__(self, buckets: Buckets) -> None:
        self._buckets = buckets
        self.ids: set[str] = set()
        self._watch: asyncio.Task[None] | None = None

    async def cancel(self, task_ids: list[str]) -> None:
        """Mark tasks cancelled for every replica."""
        kv = await self._buckets.get(Bucket.CANCELS)
        for task_id in task_ids:
            await kv.put(task_id, b"1")
        self.ids.update(task_ids)

    def any(self, *task_ids: str | None) -> bool:
        """Whether any of these (a task, its parent, ...) is cancelled."""
        return any(t in self.ids for t in task_ids if t)

    async def follow(self) -> None:
        """Keep `ids` current from the bucket (in memory: no read per task). Returns once
        every cancellation stored so far is known, so a process that is only starting does
        not run a task cancelled before it started."""
        kv = await self._buckets.get(Bucket.CANCELS)
        watcher = await kv.watchall()

        async def follow() -> None:
            async for entry in watcher:
                if entry is not None and entry.key and entry.operation is None:
                    self.ids.add(entry.key)

        self._watch = asyncio.create_task(follow())
        # The watch delivers them too, but says "that was all" too early (kvscan.py).
        self.ids.update([entry.key async for entry in kv_entries(kv) if entry.value])

    async def stop(self) -> None:
        """Stop following."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
