"""Maintenance wiring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from helpline.common.breaker import BreakerPolicy
from helpline.common.bus import Bus
from helpline.common.guard import AllowList
from helpline.common.leases import Lease
from helpline.common.messages import MaintenanceTask, derived_id
from helpline.common.runtime import retry_policy
from helpline.common.sources import SCHEDULE_LEASE
from helpline.common.subjects import Kind, Priority
from helpline.common.taskpool import TaskConsumer
from helpline.common.taskstore import TaskStore
from helpline.maintenance.handlers import build_consumers
from helpline.maintenance.settings import MaintenanceSettings
from helpline.maintenance.sources import holder_name, schedule_sources
from helpline.maintenance.webhooks import Deliverer, build_consumer, retry_for

log = logging.getLogger(__name__)


async def schedule(
    store: TaskStore, job: str, every_s: float, params: dict[str, Any] | None = None
) -> None:
    """Submit `job` once every `every_s`, at low priority, from every replica: each period's
    task has one id (derived from the period), so the replicas' copies are one task."""
    while True:
        await asyncio.sleep(every_s - time.time() % every_s)
        period = int(time.time() // every_s)
        task = MaintenanceTask(
            task_id=derived_id("schedule", job, str(period)),
            job=job,
            params=params or {},
            priority=Priority.LOW,
        )
        try:
            await store.submit(Kind.MAINTENANCE, task)
        except Exception as exc:  # the bus may be down; the next period tries again
            log.warning("scheduling %s: %r", job, exc)


async def stopped(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for it to end, cancelling again if a cancellation got lost on
    the way (Python 3.11's `asyncio.wait_for` drops one that arrives as its inner call
    completes; seen here as a stop that waited for ever on the sources' loop)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


class MaintenanceComponent:
    name = "maintenance"

    def __init__(self, settings: MaintenanceSettings) -> None:
        self.settings = settings
        self._schedule: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._sources: asyncio.Task[None] | None = None
        self._lease: Lease | None = None
        self._deliverer: Deliverer | None = None

    def consumers(self, bus: Bus) -> list[TaskConsumer]:
        s = self.settings
        self._deliverer = Deliverer(
            bus,
            AllowList.parse(s.webhook_allowed),
            retry_for(s.webhook_backoff_base_s, s.webhook_backoff_cap_s, s.webhook_max_attempts),
            BreakerPolicy(failures=s.webhook_breaker_failures, open_s=s.webhook_breaker_open_s),
            timeout_s=s.webhook_timeout_s,
        )
        return [
            *build_consumers(bus, concurrency=s.maintenance_concurrency, policy=retry_policy(s)),
            build_consumer(bus, self._deliverer, concurrency=s.webhook_concurrency),
        ]

    async def start(self, bus: Bus) -> None:
        if self._deliverer is not None:
            await self._deliverer.start()
        every = self.settings.maintenance_reconcile_every_s
        if every > 0:
            self._schedule = asyncio.create_task(schedule(TaskStore(bus), "reconcile", every))
        watchdog_every = self.settings.maintenance_watchdog_every_s
        if watchdog_every > 0:
            params = {
                "max_run_s": dict(retry_policy(self.settings).max_run_s),
                "grace_s": self.settings.maintenance_watchdog_grace_s,
            }
            self._watchdog = asyncio.create_task(
                schedule(TaskStore(bus), "watchdog", watchdog_every, params)
            )
        sources_every = self.settings.maintenance_sources_every_s
        if sources_every > 0:
            self._lease = Lease(
                bus.buckets, SCHEDULE_LEASE, holder_name(), self.settings.maintenance_lease_ttl_s
            )
            self._sources = asyncio.create_task(schedule_sources(bus, self._lease, sources_every))

    async def stop(self) -> None:
        for task in (self._schedule, self._watchdog, self._sources):
            if task is not None:
                await stopped(task)
        self._schedule = self._watchdog = self._sources = None
        if self._deliverer is not None:
            await self._deliverer.aclose()
            self._deliverer = None
        if self._lease is not None:
            # Handed back at once: another replica takes the schedule without waiting a TTL.
            with contextlib.suppress(Exception):
                await self._lease.release()
            self._lease = None
