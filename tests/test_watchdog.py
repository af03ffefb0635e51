"""The watchdog (issue 19): tasks left `running` with no live worker are settled, and work
that is really running is not. Real nats-server, the gateway's tracker writing records,
maintenance workers as processes of their own (one killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import System, start_system, stop_system
from e2e_helpers import eventually

from helpline.cli.natsserver import NatsServer
from helpline.common import metrics
from helpline.common.embedding import Embedder
from helpline.common.messages import (
    ChunkBatch,
    MaintenanceTask,
    derived_id,
    new_task_id,
    utcnow,
)
from helpline.common.records import Progress, Status, TaskRecord
from helpline.common.subjects import Kind
from helpline.common.taskstore import TaskStore
from helpline.maintenance.watchdog import watch
from helpline.testing import ServiceProcess

LIVE_WITHIN_S = 7.0  # heartbeats come every 5 s
GRACE_S = 0.5


def worker_env(prefix: str) -> dict[str, str]:
    return {
        "HELPLINE_BUS_PREFIX": prefix,
        "HELPLINE_FILE_STORAGE": "false",
        "HELPLINE_MAINTENANCE_RECONCILE_EVERY_S": "0",
        "HELPLINE_MAINTENANCE_SOURCES_EVERY_S": "0",
        "HELPLINE_MAINTENANCE_WATCHDOG_EVERY_S": "0",
        "HELPLINE_MAINTENANCE_CONCURRENCY": "2",
        "HELPLINE_LOG_LEVEL": "WARNING",
    }


def stale_running(kind: Kind, replica: str, **fields: object) -> TaskRecord:
    """A record a worker left `running` five minutes ago."""
    return TaskRecord(
        task_id=new_task_id(),
        kind=kind,
        status=Status.RUNNING,
        attempts=1,
        replica=replica,
        updated_at=utcnow() - timedelta(minutes=5),
        **fields,  # type: ignore[arg-type]
    )


def settled_count(kind: str, outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "helpline_watchdog_settled_total", {"kind": kind, "outcome": outcome}
    )
    return value or 0.0


async def test_a_killed_workers_task_is_requeued_an_orphan_failed_and_live_work_left_alone(
    nats_server: NatsServer,
    prefix: str,
    tmp_path: Path,
    model: Embedder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The gateway alone in the test's process: its tracker writes the records.
    system: System = await start_system(
        nats_server.url,
        prefix,
        tmp_path,
        model,
        without=frozenset({"scraper", "embedder", "rag", "maintenance"}),
    )
    bus = system.host.bus
    store = TaskStore(bus)
    victim = ServiceProcess("maintenance", nats_server.url, tmp_path / "victim", worker_env(prefix))
    survivor = ServiceProcess(
        "maintenance", nats_server.url, tmp_path / "survivor", worker_env(prefix)
    )

    async def running_on(task_id: str, pid: int) -> bool:
        record = await store.get(task_id)
        return (
            record is not None
            and record.status is Status.RUNNING
            and (record.replica or "").endswith(f"-{pid}")
        )

    async def long_ping() -> str:
        task = MaintenanceTask(task_id=new_task_id(), job="ping", params={"delay_ms": 60_000})
        await store.submit(Kind.MAINTENANCE, task, fresh=True)
        return task.task_id

    try:
        # A ping running on a worker killed with SIGKILL: its message stays on the bus (it
        # will be delivered again after ack_wait, 60 s), its record says running.
        victim.start()
        killed_task = await long_ping()
        assert await eventually(lambda: running_on(killed_task, victim.pid), timeout_s=20)
        victim_pid = victim.pid
        victim.kill()
        # A ping really running, for as long as the test, on a live worker.
        survivor.start()
        live_task = await long_ping()
        assert await eventually(lambda: running_on(live_task, survivor.pid), timeout_s=20)

        # Left running by a process that never was, nothing on the bus for it: an orphan.
        orphan = stale_running(Kind.SCRAPE, "ghost-1")
        await store.create(orphan)
        # A page handed to the embedder (its embed message waits; no embedder runs here).
        handed = stale_running(Kind.SCRAPE, "ghost-2")
        await store.create(handed)
        await bus.submit(
            Kind.EMBED,
            ChunkBatch(
                task_id=derived_id(handed.task_id, "embed"),
                url="http://127.0.0.1:9/page",
                title="page",
                brand="acme",
                chunks=[],
                fetched_at=utcnow(),
                report_task_id=handed.task_id,
            ),
        )
        # Parents run while their children do: reconcile's business, never the watchdog's.
        crawl = stale_running(Kind.CRAWL, "ghost-3")
        batch = stale_running(Kind.SCRAPE, "ghost-4", progress=Progress(done=1, total=3))
        for parent in (crawl, batch):
            await store.create(parent)

        failed_before = settled_count("scrape", "failed")
        requeued_before = settled_count("maintenance", "requeued")
        requeued: set[str] = set()
        failed: set[str] = set()
        caplog.set_level(logging.WARNING, logger="helpline.maintenance.watchdog")
        deadline = time.monotonic() + 30
        # The killed worker's heartbeat goes stale within LIVE_WITHIN_S; the live task's
        # record is older than the grace for most of the looks.
        looks = 0
        while killed_task not in requeued or looks < 8:
            looks += 1
            assert time.monotonic() < deadline, (requeued, failed)
            done = await watch(bus, time.time(), grace_s=GRACE_S, live_within_s=LIVE_WITHIN_S)
            requeued.update(done["requeued"])
            failed.update(done["failed"])
            # Never the live task, the page handed over or a parent.
            assert not {live_task, handed.task_id, crawl.task_id, batch.task_id} & (
                requeued | failed
            ), done
            await asyncio.sleep(0.3)
        assert requeued == {killed_task}
        assert failed == {orphan.task_id}
        assert settled_count("scrape", "failed") == failed_before + 1
        assert settled_count("maintenance", "requeued") == requeued_before + 1
        logged = [r.getMessage() for r in caplog.records if r.name.endswith("watchdog")]
        assert any(orphan.task_id in line and "ghost-1" in line for line in logged), logged
        assert any(killed_task in line and str(victim_pid) in line for line in logged), logged

        # The tracker applies the watchdog's events like any others.
        async def status_of(task_id: str, status: Status) -> bool:
            record = await store.get(task_id)
            return record is not None and record.status is status

        assert await eventually(lambda: status_of(killed_task, Status.RETRYING), timeout_s=10)
        assert await eventually(lambda: status_of(orphan.task_id, Status.FAILED), timeout_s=10)
        requeued_record = await store.get(killed_task)
        orphan_record = await store.get(orphan.task_id)
        assert requeued_record is not None
        assert requeued_record.error is not None
        assert orphan_record is not None
        assert orphan_record.error is not None
        assert orphan_record.error.type == "WorkerLost"
        assert re.fullmatch(
            r"no live worker for \d+ s; settled by the watchdog", orphan_record.error.message
        ), orphan_record.error
        assert re.fullmatch(
            r"no live worker for \d+ s; its message will be delivered again; "
            r"settled by the watchdog",
            requeued_record.error.message,
        ), requeued_record.error
        response = await system.client.get(f"/api/v1/tasks/{orphan.task_id}")
        assert response.json()["status"] == "failed"
        assert "settled by the watchdog" in response.json()["error"]["message"]

        # An hour later by the clock, every record is long past its kind's longest run: the
        # live task is still left alone (its worker beats and holds its message), so are the
        # page handed over and the parents; nothing is settled twice.
        later = await watch(bus, time.time() + 3600, grace_s=GRACE_S, live_within_s=LIVE_WITHIN_S)
        assert (later["requeued"], later["failed"]) == ([], []), later
        live = await store.get(live_task)
        assert live is not None
        assert live.status is Status.RUNNING

        # The scheduled job's path: a maintenance task that the live worker runs.
        second_orphan = stale_running(Kind.EMBED, "ghost-5")
        await store.create(second_orphan)
        outcome = await store.run(
            Kind.MAINTENANCE,
            MaintenanceTask(
                task_id=new_task_id(),
                job="watchdog",
                params={"grace_s": GRACE_S, "live_within_s": LIVE_WITHIN_S},
            ),
            timeout_s=30,
        )
        assert outcome.result is not None, outcome
        assert outcome.result["failed"] == [second_orphan.task_id], outcome.result
        assert outcome.result["requeued"] == []
        assert await eventually(
            lambda: status_of(second_orphan.task_id, Status.FAILED), timeout_s=10
        )
        assert await running_on(live_task, survivor.pid)
    finally:
        victim.kill()
        survivor.kill()
        await stop_system(system)
