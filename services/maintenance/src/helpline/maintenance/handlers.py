"""Maintenance subscribers: message in, job out."""

from __future__ import annotations

from helpline.common.bus import Bus
from helpline.common.messages import MaintenanceTask
from helpline.common.retrypolicy import RetryPolicy
from helpline.common.subjects import Kind
from helpline.common.taskpool import TaskConsumer
from helpline.common.worker import Result, TaskContext
from helpline.maintenance.jobs import job_named


async def run_job(task: MaintenanceTask, ctx: TaskContext) -> Result:
    return await job_named(task.job)(task.params, ctx)


def build_consumers(bus: Bus, *, concurrency: int, policy: RetryPolicy) -> list[TaskConsumer]:
    return [
        TaskConsumer(
            bus, Kind.MAINTENANCE, MaintenanceTask, run_job, concurrency=concurrency, policy=policy
        )
    ]
