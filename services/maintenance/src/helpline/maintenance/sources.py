"""The sources' schedule: the replica holding the lease starts each due source's crawl.

Every replica looks every `every_s` and tries to take or renew the lease
(`leases.SCHEDULE_LEASE`); only its holder starts runs. A run is submitted as the gateway
submits a crawl (listed as an open parent, then the record and the task), at `low`
priority, under an id derived from the source and its due time, then noted on the source
with its next due time. A holder killed between the two leaves the run due: the next
holder submits the same id again, which is the same task.

Once a run's crawl has ended, the holder sweeps the source's pages (its brand's under its
root URL): a page the crawl did not reach (no longer linked nor in the sitemap) counts a
miss, as the scraper counts one for a page that answered 404/410; a page missed by two
crawls in a row leaves the index (an embed task, as a deleted document). A crawl that failed
or hit `max_pages` counts no misses for pages it did not reach: it may simply not have got
there. The sweep's counts (unchanged, missed, removed) are noted on the source's last run and
announced to webhooks with the crawl's (`source.refreshed`, once per run: its deliveries' ids
derive from the run's task id).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from helpline.common.bus import Bus
from helpline.common.crawlstate import CrawlLedger
from helpline.common.documents import list_documents, removal_batch, under
from helpline.common.leases import Lease
from helpline.common.messages import PageState, RemovalReason, utcnow
from helpline.common.pagestate import PageStates
from helpline.common.records import Status, TaskRecord
from helpline.common.sources import (
    Source,
    SourceRun,
    SourceStore,
    crawl_task,
    run_task_id,
)
from helpline.common.subjects import Kind, Priority
from helpline.common.taskstore import TaskStore
from helpline.common.webhooks import Announcer, DeliveryLog, WebhookEvent, WebhookStore

log = logging.getLogger(__name__)

#: A page missed by this many crawls in a row leaves the index.
MISSES_TO_REMOVE = 2


def holder_name() -> str:
    """This replica's name in the lease: host, process id and a nonce (a restarted process
    with a recycled pid is another holder)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def start_due(bus: Bus, lease: Lease) -> list[str]:
    """Start every due source's run while the lease is held; the task ids started."""
    store = SourceStore(bus.buckets)
    records = TaskStore(bus)
    ledger = CrawlLedger(bus.buckets)
    started = []
    for source in await store.due(utcnow()):
        if not lease.held():
            break
        task_id = run_task_id(source, source.next_due)
        try:
            await ledger.mark_open(task_id, time.time())
            await records.submit(Kind.CRAWL, crawl_task(source, task_id))
        except Exception as exc:  # the bus refused it: the source stays due, tried next look
            log.warning("starting source %s: %r", source.id, exc)
            continue
        await store.note_run(source, task_id, utcnow(), by=lease.holder)
        started.append(task_id)
        log.info("source %s: started crawl %s", source.id, task_id)
    return started


async def sweep_ended(bus: Bus, lease: Lease) -> int:
    """Sweep every source whose last run ended and was not swept yet; how many were."""
    store = SourceStore(bus.buckets)
    records = TaskStore(bus)
    ledger = CrawlLedger(bus.buckets)
    swept = 0
    for source in await store.all():
        run = source.last_run
        if run is None or run.swept_at is not None:
            continue
        if not lease.held():
            break
        record = await records.get(run.task_id)
        if record is not None and not record.status.terminal:
            continue  # still crawling
        complete = (
            record is not None
            and record.status is Status.SUCCEEDED
            and await ledger.pages_claimed(run.task_id) < source.max_pages
        )
        await sweep(bus, source, run, complete=complete, record=record)
        swept += 1
    return swept


async def sweep(
    bus: Bus,
    source: Source,
    run: SourceRun,
    *,
    complete: bool,
    record: TaskRecord | None = None,
) -> None:
    """Count the misses of `run` on `source`'s pages, remove those missed twice in a row, note
    what was found on the source and announce it (`record`: the run's crawl)."""
    pages = PageStates(bus.buckets)
    inside = under(source.url)

    def of_source(state: PageState) -> bool:
        return state.brand == source.brand and inside(state.url)

    documents = (await list_documents(bus.buckets, keep=of_source, limit=10**9)).items
    unchanged = missed = 0
    gone = []
    for document in documents:
        state = document.state
        reached = state.seen_by == run.task_id
        # Once per run, also when a holder that died mid-sweep left it to be done again.
        counts = complete and not reached and state.missed_by != run.task_id
        misses = state.misses + 1 if counts else state.misses
        if misses >= MISSES_TO_REMOVE:
            gone.append(document)
        elif misses:
            missed += 1
            if counts:
                update = {"misses": misses, "missed_by": run.task_id}
                await pages.save(document.id, state.model_copy(update=update))
        elif reached and (state.changed_at is None or state.changed_at < run.started_at):
            unchanged += 1
    if gone:
        batches = [
            removal_batch(d, Priority.LOW, reason=RemovalReason.MISSED, source_id=source.id)
            for d in gone
        ]
        await TaskStore(bus).submit_many(Kind.EMBED, batches)
        log.info("source %s: %d pages missed twice, removed", source.id, len(gone))
    found = {"unchanged": unchanged, "missed": missed, "removed": len(gone)}
    # Before the sweep is noted: a holder that dies in between announces again, under the
    # same delivery ids.
    await announce_refreshed(bus, source, run, record, found)
    await SourceStore(bus.buckets).note_sweep(source.id, run.task_id, **found)


async def announce_refreshed(
    bus: Bus, source: Source, run: SourceRun, record: TaskRecord | None, counts: dict[str, int]
) -> None:
    """`source.refreshed` to the webhooks that want it: the run's crawl and sweep counts."""
    announcer = Announcer(WebhookStore(bus.buckets), TaskStore(bus), DeliveryLog(bus.buckets))
    result = (record.result if record is not None else None) or {}
    data = {
        "source_id": source.id,
        "brand": source.brand,
        "url": source.url,
        "task_id": run.task_id,
        "status": str(record.status) if record is not None else None,
        **{k: result.get(k, 0) for k in ("pages_ok", "pages_failed", "chunks_indexed")},
        **counts,
        "finished_at": record.finished_at if record is not None else None,
    }
    await announcer.announce(
        WebhookEvent.SOURCE_REFRESHED, data, brand=source.brand, seed=run.task_id
    )


async def schedule_sources(bus: Bus, lease: Lease, every_s: float) -> None:
    """Look for due sources every `every_s` (and renew the lease at least thrice a TTL)."""
    tick = min(every_s, lease.ttl_s / 3)
    while True:
        try:
            if await lease.hold():
                await sweep_ended(bus, lease)
                await start_due(bus, lease)
        except Exception as exc:  # the bus may be down; the next look tries again
            log.warning("scheduling sources: %r", exc)
        await asyncio.sleep(tick)
