"""Maintenance wiring."""

from __future__ import annotations

from faststream.nats import NatsRouter

from helpline.common.bus import Bus
from helpline.common.runtime import retry_policy
from helpline.common.worker import TaskConsumer
from helpline.maintenance.handlers import build_consumers
from helpline.maintenance.settings import MaintenanceSettings


class MaintenanceComponent:
    name = "maintenance"

    def __init__(self, settings: MaintenanceSettings) -> None:
        self.settings = settings

    def routers(self, bus: Bus) -> list[NatsRouter]:
        return []

    def consumers(self, bus: Bus) -> list[TaskConsumer]:
        return build_consumers(
            bus,
            concurrency=self.settings.maintenance_concurrency,
            policy=retry_policy(self.settings),
        )

    async def start(self, bus: Bus) -> None:
        return None

    async def stop(self) -> None:
        return None
