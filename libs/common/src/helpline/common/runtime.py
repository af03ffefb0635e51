"""Hosting services: one bus connection, the layout declared, every component's task pools started.

`helpline up` hosts every component in one process; `helpline run <service>` hosts one.
Either way the bus is real: every message goes through the NATS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Protocol

from helpline.common import spanstore
from helpline.common.bus import Bus, NatsAuth
from helpline.common.kv import Replicas
from helpline.common.layout import BusLayout
from helpline.common.messages import utcnow
from helpline.common.retrypolicy import DEFAULT_MAX_RUN_S, RetryPolicy
from helpline.common.settings import HelplineSettings
from helpline.common.taskpool import TaskConsumer

log = logging.getLogger(__name__)


class Component(Protocol):
    """A service's part in a process: its task pools, and what it opens and closes."""

    name: str

    def consumers(self, bus: Bus) -> list[TaskConsumer]: ...

    async def start(self, bus: Bus) -> None: ...

    async def stop(self) -> None: ...


def retry_policy(settings: HelplineSettings) -> RetryPolicy:
    """The retry policy the settings describe."""
    return RetryPolicy(
        base_s=settings.backoff_base_s,
        cap_s=settings.backoff_cap_s,
        max_attempts=settings.max_deliver,
        max_run_s={**DEFAULT_MAX_RUN_S, **settings.max_run_s},
    )


class Host:
    """Connects to NATS, declares the layout, runs the components until stopped."""

    def __init__(self, settings: HelplineSettings, components: list[Component], *, name: str):
        if not settings.nats_url:
            raise ValueError("no NATS URL: set HELPLINE_NATS_URL or use `helpline up`")
        self.settings = settings
        self.components = components
        self.name = name
        self.bus = Bus(BusLayout.from_settings(settings))
        self.replicas = Replicas(self.bus.buckets)
        self._started: list[Component] = []
        self.task_consumers: list[TaskConsumer] = []
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}".replace(".", "-")
        self.bus.replica_id = self.replica_id  # named in its workers' events
        self._started_at = utcnow()
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect, bootstrap, start components, then start consuming."""
        assert self.settings.nats_url is not None
        await self.bus.connect(
            self.settings.nats_url, name=self.name, auth=NatsAuth.from_settings(self.settings)
        )
        await self.bus.bootstrap()
        spanstore.attach(self.bus.nc, self.bus.layout.prefix)
        for component in self.components:
            self.task_consumers.extend(component.consumers(self.bus))
        for component in self.components:
            await component.start(self.bus)
            self._started.append(component)
        await self.bus.cancellations.follow()
        for consumer in self.task_consumers:
            await consumer.start()
        self._heartbeat = asyncio.create_task(self._beat())
        log.info("started %s", ", ".join(c.name for c in self.components))

    def report(self) -> dict[str, object]:
        """This replica as the gateway's views show it: services, breakers and pools."""
        return {
            "replica": self.replica_id,
            # A helper part (up's live backups) is not a service the views should list.
            "services": [c.name for c in self.components if getattr(c, "service", True)],
            "started_at": self._started_at.isoformat(),
            "at": utcnow().isoformat(),
            "breakers": self.bus.breakers.snapshot(),
            "pools": [c.report() for c in self.task_consumers],
            # Batch work held back for questions (`urgency.Urgency`): now, and in all.
            "batch_yielding": self.bus.urgency.yielding(),
            "batch_yielded_s": round(self.bus.urgency.yielded_s(), 3),
        }

    async def _beat(self, every_s: float = 5.0) -> None:
        while True:
            with contextlib.suppress(Exception):  # the bus may be reconnecting; try next beat
                await self.replicas.beat(self.replica_id, self.report())
            await asyncio.sleep(every_s)

    async def stop(self) -> None:
        """Stop taking work and let in-flight tasks finish (up to the grace period; the rest
        are handed back), then close components in reverse order, then disconnect."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
            with contextlib.suppress(Exception):
                await self.replicas.leave(self.replica_id)
        grace = self.settings.shutdown_grace_s
        results = await asyncio.gather(
            *(consumer.stop(grace) for consumer in self.task_consumers),
            return_exceptions=True,
        )
        self.task_consumers.clear()
        for result in results:
            if isinstance(result, BaseException):  # shutting down: report, keep closing
                log.error("stopping a task pool: %r", result)
        for component in reversed(self._started):
            try:
                await component.stop()
            except Exception:
                log.exception("stopping %s", component.name)
        self._started.clear()
        await spanstore.detach(self.bus.nc)
        await self.bus.close()

    async def run_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
