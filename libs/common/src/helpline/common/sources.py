"""Sources: sites crawled again on a schedule (the `sources` bucket).

The gateway creates, changes and deletes them; the maintenance service starts each due
source's crawl at `low` priority (`due_sources`, `start_run`), one replica at a time (a
`leases.Lease`). A run's task id is derived from the source and the time it was due, so a
run started twice (a holder that died between starting it and noting it) is one task.
A source keeps its last run's task id; how that crawl went is read from its record.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel, Field

from helpline.common.kv import kv_get
from helpline.common.kvscan import kv_entries
from helpline.common.messages import (
    CrawlScope,
    CrawlTask,
    RenderMode,
    derived_id,
    new_task_id,
    utcnow,
)
from helpline.common.subjects import Bucket, Priority

if TYPE_CHECKING:
    from helpline.common.kv import Buckets

#: The lease the maintenance replicas share to start due sources.
SCHEDULE_LEASE = "sources-schedule"


class SourceRun(BaseModel):
    """A crawl the schedule started for a source."""

    task_id: str
    due_at: datetime
    started_at: datetime
    #: The maintenance replica that started it (the lease's holder).
    started_by: str | None = None
    #: Once the crawl ended, its sweep (`maintenance.sources.sweep`): when, and what it found
    #: of the source's pages: unchanged, missed (not reached or gone; kept until a second
    #: miss in a row) and removed.
    swept_at: datetime | None = None
    pages_unchanged: int | None = None
    pages_missed: int | None = None
    pages_removed: int | None = None


class Source(BaseModel):
    """A site crawled every `refresh_s` seconds, with the options of a crawl."""

    id: str
    url: str
    brand: str
    refresh_s: int
    max_pages: int = 100
    max_depth: int = 3
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    render: RenderMode = RenderMode.AUTO
    created_at: datetime
    updated_at: datetime
    next_due: datetime
    last_run: SourceRun | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def new_source(
    url: str,
    brand: str,
    refresh_s: int,
    *,
    max_pages: int = 100,
    max_depth: int = 3,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    render: RenderMode = RenderMode.AUTO,
) -> Source:
    """A source due at once: its first crawl starts at the schedule's next look."""
    now = utcnow()
    return Source(
        id=new_task_id(),
        url=url,
        brand=brand,
        refresh_s=refresh_s,
        max_pages=max_pages,
        max_depth=max_depth,
        include=include or [],
        exclude=exclude or [],
        render=render,
        created_at=now,
        updated_at=now,
        next_due=now,
    )


def run_task_id(source: Source, due_at: datetime) -> str:
    """The crawl task id of `source`'s run due at `due_at`: the same however often started."""
    return derived_id("source", source.id, due_at.astimezone(UTC).isoformat())


def crawl_task(source: Source, task_id: str) -> CrawlTask:
    """The `low` crawl a scheduled run submits."""
    return CrawlTask(
        task_id=task_id,
        priority=Priority.LOW,
        url=source.url,
        brand=source.brand,
        scope=CrawlScope(
            root_url=source.url,
            max_pages=source.max_pages,
            max_depth=source.max_depth,
            include=source.include,
            exclude=source.exclude,
        ),
        render=source.render,
    )


def next_due_after(due_at: datetime, refresh_s: int, now: datetime) -> datetime:
    """The first time on `due_at`'s grid of `refresh_s` after `now`: runs missed while no
    replica held the schedule are started once, not one after another."""
    periods = max(1, math.floor((now - due_at).total_seconds() / refresh_s) + 1)
    return due_at + timedelta(seconds=periods * refresh_s)


class SourceStore:
    """Sources in the `sources` bucket, one key each, changed by compare-and-swap."""

    def __init__(self, buckets: Buckets) -> None:
        self._buckets = buckets

    async def create(self, source: Source) -> Source:
        kv = await self._buckets.get(Bucket.SOURCES)
        await kv.create(source.id, source.to_bytes())
        return source

    async def read(self, source_id: str) -> tuple[Source, int] | None:
        """The source and its revision, or None."""
        entry = await kv_get(await self._buckets.get(Bucket.SOURCES), source_id)
        if entry is None:
            return None
        try:
            return Source.model_validate_json(entry[0]), entry[1]
        except ValueError:
            return None

    async def get(self, source_id: str) -> Source | None:
        found = await self.read(source_id)
        return found[0] if found else None

    async def all(self, brand: str | None = None) -> list[Source]:
        """Every source (of `brand`), oldest first."""
        kv = await self._buckets.get(Bucket.SOURCES)
        found: dict[str, Source] = {}
        async for entry in kv_entries(kv):
            try:
                source = Source.model_validate_json(entry.value)
            except ValueError:
                continue
            if brand is None or source.brand == brand:
                found[source.id] = source
        return sorted(found.values(), key=lambda s: (s.created_at, s.id))

    async def change(
        self, source_id: str, change: Callable[[Source], Source | None]
    ) -> Source | None:
        """Apply `change` to the current source until the write lands; None if the source is
        gone (or `change` returned None: nothing to write)."""
        kv = await self._buckets.get(Bucket.SOURCES)
        while True:
            found = await self.read(source_id)
            if found is None:
                return None
            changed = change(found[0])
            if changed is None:
                return None
            try:
                await kv.update(source_id, changed.to_bytes(), last=found[1])
            except KeyWrongLastSequenceError:
                continue
            return changed

    async def delete(self, source_id: str) -> bool:
        """Remove the source; whether it existed."""
        kv = await self._buckets.get(Bucket.SOURCES)
        if await kv_get(kv, source_id) is None:
            return False
        try:
            await kv.delete(source_id)
        except KeyNotFoundError:
            return False
        return True

    async def due(self, now: datetime) -> list[Source]:
        """The sources whose next run is due at `now`, longest waiting first."""
        return sorted((s for s in await self.all() if s.next_due <= now), key=lambda s: s.next_due)

    async def note_sweep(
        self, source_id: str, task_id: str, *, unchanged: int, missed: int, removed: int
    ) -> Source | None:
        """Record the sweep of run `task_id` on the source (nothing if another run is its last)."""

        def noted(current: Source) -> Source | None:
            run = current.last_run
            if run is None or run.task_id != task_id or run.swept_at is not None:
                return None
            swept = run.model_copy(
                update={
                    "swept_at": utcnow(),
                    "pages_unchanged": unchanged,
                    "pages_missed": missed,
                    "pages_removed": removed,
                }
            )
            return current.model_copy(update={"last_run": swept})

        return await self.change(source_id, noted)

    async def note_run(
        self, source: Source, task_id: str, now: datetime, *, by: str | None = None
    ) -> Source | None:
        """Record that the run due at `source.next_due` started as `task_id`, and when the
        next is due; nothing if the source changed its due time (or went) meanwhile."""
        due_at = source.next_due

        run = SourceRun(task_id=task_id, due_at=due_at, started_at=now, started_by=by)

        def noted(current: Source) -> Source | None:
            if current.last_run is not None and current.last_run.due_at >= due_at:
                return None  # noted already
            if current.next_due != due_at:  # changed meanwhile (a new refresh_s): kept
                return current.model_copy(update={"last_run": run})
            following = next_due_after(due_at, current.refresh_s, now)
            return current.model_copy(update={"last_run": run, "next_due": following})

        return await self.change(source.id, noted)
