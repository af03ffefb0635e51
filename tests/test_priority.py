"""Priorities behave as priorities: a critical task overtakes a bulk backlog, which still drains."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

from conftest import start_system, stop_system
from e2e_helpers import wait_terminal

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.common.messages import MaintenanceTask, new_task_id
from helpline.common.subjects import Kind, Priority
from helpline.gateway.tasks import Tasks

BACKLOG = 1000
LATE = 50


async def submit_pings(tasks: Tasks, count: int, priority: Priority, delay_ms: int) -> list[str]:
    ids = [new_task_id() for _ in range(count)]
    for start in range(0, count, 100):
        await asyncio.gather(
            *(
                tasks.submit(
                    Kind.MAINTENANCE,
                    MaintenanceTask(
                        task_id=i, priority=priority, job="ping", params={"delay_ms": delay_ms}
                    ),
                )
                for i in ids[start : start + 100]
            )
        )
    return ids


async def test_critical_overtakes_bulk_backlog_and_backlog_drains(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder
) -> None:
    system = await start_system(nats_server.url, prefix, tmp_path, model, maintenance_concurrency=2)
    try:
        gateway = system.host.components[0]
        tasks: Tasks = gateway.tasks  # type: ignore[attr-defined]
        # Long enough that the backlog cannot drain before the late tasks and the critical one
        # are queued, even on a fast idle machine.
        backlog = await submit_pings(tasks, BACKLOG, Priority.BULK, delay_ms=10)
        # Saturated: the pool is busy and the backlog is still there.
        pool = next(c for c in system.host.task_consumers if c.kind is Kind.MAINTENANCE)
        for _ in range(1000):
            if pool.busy:
                break
            await asyncio.sleep(0.01)
        assert pool.busy > 0
        late = await submit_pings(tasks, LATE, Priority.BULK, delay_ms=3)
        submitted = time.monotonic()
        critical = await system.client.post(
            "/api/v1/maintenance/ping", json={"priority": "critical"}
        )
        record = await wait_terminal(system.client, critical.json()["task_id"])
        waited = time.monotonic() - submitted
        assert record["status"] == "succeeded"
        critical_start = datetime.fromisoformat(record["started_at"])

        # Every bulk task queued after saturation began started after the critical one.
        for task_id in late:
            done = await wait_terminal(system.client, task_id, timeout_s=120)
            assert datetime.fromisoformat(done["started_at"]) > critical_start
        # And the whole backlog drained.
        for task_id in backlog:
            assert (await wait_terminal(system.client, task_id, timeout_s=120))[
                "status"
            ] == "succeeded"
        print(
            f"PRIORITY backlog={BACKLOG} late={LATE} critical_wait_ms={waited * 1000:.1f} "
            f"started={pool.started_by_priority}"
        )
    finally:
        await stop_system(system)


async def test_batch_work_yields_while_urgent_work_runs_in_the_process(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder
) -> None:
    """Bulk pings run at full speed, then at the reserved share while critical pings keep
    starting in the same process, then at full speed again; every one of them finishes."""
    system = await start_system(
        nats_server.url,
        prefix,
        tmp_path,
        model,
        maintenance_concurrency=2,
        bulk_yield_window_s=1.0,
        bulk_yield_starts_per_s=5.0,
    )
    try:
        gateway = system.host.components[0]
        tasks: Tasks = gateway.tasks  # type: ignore[attr-defined]
        pool = next(c for c in system.host.task_consumers if c.kind is Kind.MAINTENANCE)
        backlog = await submit_pings(tasks, 1500, Priority.BULK, delay_ms=2)

        def bulk_started() -> int:
            return pool.started_by_priority[Priority.BULK]

        async def bulk_rate(seconds: float) -> float:
            before = bulk_started()
            await asyncio.sleep(seconds)
            return (bulk_started() - before) / seconds

        for _ in range(1000):
            if bulk_started() >= 20:
                break
            await asyncio.sleep(0.01)
        full_speed = await bulk_rate(0.5)

        async def questions(seconds: float) -> list[str]:
            ids = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                ids += await submit_pings(tasks, 1, Priority.CRITICAL, delay_ms=0)
                await asyncio.sleep(0.05)
            return ids

        asking = asyncio.create_task(questions(2.0))
        await asyncio.sleep(0.3)  # the first critical pings have started
        yielding = await bulk_rate(1.5)
        critical = await asking
        await asyncio.sleep(1.2)  # the window has passed
        after = await bulk_rate(0.5)

        print(
            f"YIELD bulk starts/s: {full_speed:.0f} before, {yielding:.1f} while critical pings "
            f"ran, {after:.0f} after"
        )
        assert yielding <= 5.0 * 1.5 + 1  # the reserved share, give or take a timer's tick
        assert yielding > 0  # and never nothing
        assert full_speed >= 4 * yielding
        assert after >= 4 * yielding or bulk_started() == len(backlog)
        # The replica's heartbeat, and so GET /api/v1/workers, says how long it held back.
        report = system.host.report()
        assert report["batch_yielding"] is False
        assert 1.5 <= float(str(report["batch_yielded_s"])) <= 4.0
        for task_id in critical:
            assert (await wait_terminal(system.client, task_id))["status"] == "succeeded"
        for task_id in backlog:
            record = await wait_terminal(system.client, task_id, timeout_s=120)
            assert record["status"] == "succeeded"
    finally:
        await stop_system(system)
