"""The sources' schedule: the replica holding the lease starts each due source's crawl.

Every replica looks every `every_s` and tries to take or renew the lease
(`leases.SCHEDULE_LEASE`); only its holder starts runs. A run is submitted as the gateway
submits a crawl (listed as an open parent, then the record and the task), at `low`
priority, under an id derived from the source and its due time, then noted on the source
with its next due time. A holder killed between the two leaves the run due: the next
holder submits the same id again, which is the same task.
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
from helpline.common.leases import Lease
from helpline.common.messages import utcnow
from helpline.common.sources import (
    SourceStore,
    crawl_task,
    run_task_id,
)
from helpline.common.subjects import Kind
from helpline.common.taskstore import TaskStore

log = logging.getLogger(__name__)


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


async def schedule_sources(bus: Bus, lease: Lease, every_s: float) -> None:
    """Look for due sources every `every_s` (and renew the lease at least thrice a TTL)."""
    tick = min(every_s, lease.ttl_s / 3)
    while True:
        try:
            if await lease.hold():
                await start_due(bus, lease)
        except Exception as exc:  # the bus may be down; the next look tries again
            log.warning("scheduling sources: %r", exc)
        await asyncio.sleep(tick)
