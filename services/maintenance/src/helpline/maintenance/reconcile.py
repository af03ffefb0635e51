"""Finding parents left behind: a crawl or batch whose progress fell behind its ledger.

The tracker counts a finished child into its parent right after writing the child's
outcome to the parent's ledger; a gateway that dies in between leaves the parent short,
and it would wait forever for a child that has long finished. This check looks at every
open parent: one whose ledger already holds every claimed page, or whose count still
differs from its ledger while its record has not changed since the previous check, gets a
`recount` event, and the tracker counts it again from the ledger (records change only
through the tracker). Parents that finished, or whose record never appeared, are dropped
from the open list.
"""

from __future__ import annotations

from typing import Any

from helpline.common.bus import Bus
from helpline.common.crawlstate import CrawlLedger
from helpline.common.messages import EventType, TaskEvent
from helpline.common.records import Progress
from helpline.common.taskstore import TaskStore

# A parent listed as open whose record never appeared (its submit failed) is forgotten then.
FORGET_UNRECORDED_S = 600.0


async def reconcile(bus: Bus, now: float) -> dict[str, Any]:
    """Check every open parent; returns how many were open, recounted and closed."""
    crawls = CrawlLedger(bus.buckets)
    records = TaskStore(bus)
    listed = await crawls.open_parents()
    recounted, closed = [], 0
    for parent_id, (note, note_revision) in listed.items():
        current = await records.read(parent_id)
        if current is None:
            if now - float(note.get("since", now)) > FORGET_UNRECORDED_S:
                await crawls.mark_closed(parent_id)
                closed += 1
            continue
        record = current[0]
        if record.status.terminal:
            await crawls.mark_closed(parent_id)
            closed += 1
            continue
        counted = await crawls.tally(parent_id)
        claimed = await crawls.pages_claimed(parent_id)
        progress = record.progress or Progress()
        total = max(progress.total, claimed)
        behind = counted.done != progress.done or total != progress.total
        complete = 0 < total <= counted.done
        stalled = note.get("revision") == current[1]
        if behind and (complete or stalled):
            await bus.emit(TaskEvent(task_id=parent_id, kind=record.kind, type=EventType.RECOUNT))
            recounted.append(parent_id)
        await crawls.note_open(parent_id, {**note, "revision": current[1]}, note_revision)
    return {"open": len(listed), "recounted": recounted, "closed": closed}
