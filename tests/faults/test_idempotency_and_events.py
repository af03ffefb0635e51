"""The same request twice is one task; late and duplicate events never move a record back."""

from __future__ import annotations

import asyncio

from conftest import System
from e2e_helpers import wait_terminal

from helpline.common.messages import EventType, TaskEvent
from helpline.common.subjects import Kind


async def test_same_idempotency_key_100_times_concurrently_is_one_task_one_message(
    system: System,
) -> None:
    bus = system.host.bus
    stream = bus.layout.task_stream(Kind.MAINTENANCE)
    before = (await bus.js.stream_info(stream)).state.last_seq
    headers = {"Idempotency-Key": "nightly-ping-2026-11-23"}
    responses = await asyncio.gather(
        *(system.client.post("/api/v1/maintenance/ping", headers=headers) for _ in range(100))
    )
    assert {r.status_code for r in responses} == {202}
    ids = {r.json()["task_id"] for r in responses}
    published = (await bus.js.stream_info(stream)).state.last_seq - before
    print(f"FAULT idempotency: requests=100 tasks={len(ids)} messages={published}")
    assert len(ids) == 1
    assert published == 1
    record = await wait_terminal(system.client, ids.pop())
    assert record["status"] == "succeeded"
    assert record["attempts"] == 1


async def test_late_and_duplicate_events_never_move_a_record_backwards(system: System) -> None:
    response = await system.client.post("/api/v1/maintenance/ping")
    task_id = response.json()["task_id"]
    done = await wait_terminal(system.client, task_id)
    assert done["status"] == "succeeded"
    late = [
        TaskEvent(task_id=task_id, kind=Kind.MAINTENANCE, type=EventType.STARTED, attempt=2),
        TaskEvent(task_id=task_id, kind=Kind.MAINTENANCE, type=EventType.RETRYING, attempt=3),
        TaskEvent(
            task_id=task_id,
            kind=Kind.MAINTENANCE,
            type=EventType.SUCCEEDED,
            attempt=1,
            result={"late": True},
        ),
    ]
    for event in late:
        await system.host.bus.emit(event)
    # A marker behind the late events: once it is applied, so are they (one stream, in order).
    marker = await system.client.post("/api/v1/maintenance/ping")
    await wait_terminal(system.client, marker.json()["task_id"])
    await asyncio.sleep(0.3)
    after = (await system.client.get(f"/api/v1/tasks/{task_id}")).json()
    print(f"FAULT late-events: moved_backwards={int(after != done)}")
    assert after == done
