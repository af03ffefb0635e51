"""The maintenance handler alone, on FastStream's in-memory broker (no server)."""

from __future__ import annotations

import pytest
from faststream.nats import JStream, NatsBroker, TestNatsBroker

from helpline.common.bus import Bus, BusLayout
from helpline.common.messages import EventType, MaintenanceTask, TaskEvent
from helpline.common.subjects import Kind, Priority, events_stream
from helpline.common.worker import RetryPolicy
from helpline.maintenance.handlers import build_router


@pytest.fixture
def broker_and_bus() -> tuple[NatsBroker, Bus]:
    broker = NatsBroker()
    bus = Bus(broker, BusLayout(prefix="unit"))
    broker.include_router(build_router(bus, concurrency=1, policy=RetryPolicy(max_attempts=1)))
    return broker, bus


async def events_for(broker: NatsBroker, bus: Bus, task: MaintenanceTask) -> list[TaskEvent]:
    seen: list[TaskEvent] = []

    @broker.subscriber(
        bus.layout.event_subject(Kind.MAINTENANCE),
        stream=JStream(events_stream("unit"), declare=False),
    )
    async def collect(event: TaskEvent) -> None:
        seen.append(event)

    async with TestNatsBroker(broker) as test_broker:
        await test_broker.publish(task, bus.layout.task_subject(Kind.MAINTENANCE, Priority.NORMAL))
    return seen


async def test_ping_succeeds_with_pong(broker_and_bus: tuple[NatsBroker, Bus]) -> None:
    broker, bus = broker_and_bus
    seen = await events_for(broker, bus, MaintenanceTask(task_id="p1", job="ping"))
    assert [e.type for e in seen] == [EventType.STARTED, EventType.SUCCEEDED]
    assert seen[-1].result is not None
    assert seen[-1].result["pong"] is True


async def test_unknown_job_fails_with_reason(broker_and_bus: tuple[NatsBroker, Bus]) -> None:
    broker, bus = broker_and_bus
    seen = await events_for(broker, bus, MaintenanceTask(task_id="p2", job="defrag"))
    assert seen[-1].type is EventType.FAILED
    assert seen[-1].error is not None
    assert "unknown maintenance job 'defrag'" in seen[-1].error.message
