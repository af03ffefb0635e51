"""Maintenance subscribers: message in, job out."""

from __future__ import annotations

from faststream.nats import NatsRouter

from helpline.common.bus import Bus
from helpline.common.messages import MaintenanceTask
from helpline.common.subjects import Kind
from helpline.common.worker import Result, RetryPolicy, TaskContext, subscribe_tasks
from helpline.maintenance.jobs import job_named


async def run_job(task: MaintenanceTask, ctx: TaskContext) -> Result:
    return await job_named(task.job)(task.params)


def build_router(bus: Bus, *, concurrency: int, policy: RetryPolicy) -> NatsRouter:
    router = NatsRouter()
    subscribe_tasks(
        router,
        bus,
        Kind.MAINTENANCE,
        MaintenanceTask,
        run_job,
        concurrency=concurrency,
        policy=policy,
    )
    return router
