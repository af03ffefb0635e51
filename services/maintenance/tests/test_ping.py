"""The maintenance handler alone: FastStream's in-memory broker for the events, a fake delivery in."""

from __future__ import annotations

from typing import Any

import pytest
from faststream.nats import JStream, NatsBroker, TestNatsBroker
from nats.errors import NotJSMessageError

from helpline.common.bus import Bus, BusLayout
from helpline.common.messages import EventType, MaintenanceTask, TaskEvent
from helpline.common.subjects import Kind, events_stream
from helpline.common.worker import Delivery, RetryPolicy
from helpline.maintenance.handlers import build_consumers


class FakeMsg:
    """Just enough of a nats Msg: its body, and which way it was settled."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.subject = "unit.tasks.maintenance.normal"
        self.headers: dict[str, str] = {}
        self.settled: list[str] = []

    @property
    def metadata(self) -> Any:
        raise NotJSMessageError

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")

    async def term(self) -> None:
        self.settled.append("term")

    async def in_progress(self) -> None:
        self.settled.append("in_progress")


async def run_one(task: MaintenanceTask | bytes) -> tuple[list[TaskEvent], FakeMsg]:
    broker = NatsBroker()
    bus = Bus(broker, BusLayout(prefix="unit"))
    (consumer,) = build_consumers(bus, concurrency=1, policy=RetryPolicy(max_attempts=1))
    seen: list[TaskEvent] = []

    @broker.subscriber(
        bus.layout.event_subject(Kind.MAINTENANCE),
        stream=JStream(events_stream("unit"), declare=False),
    )
    async def collect(event: TaskEvent) -> None:
        seen.append(event)

    msg = FakeMsg(task if isinstance(task, bytes) else task.model_dump_json().encode())
    async with TestNatsBroker(broker):
        await consumer.handle(Delivery(msg))  # type: ignore[arg-type]
    return seen, msg


async def test_ping_succeeds_with_pong() -> None:
    seen, msg = await run_one(MaintenanceTask(task_id="p1", job="ping"))
    assert [e.type for e in seen] == [EventType.STARTED, EventType.SUCCEEDED]
    assert seen[-1].result is not None
    assert seen[-1].result["pong"] is True
    assert msg.settled == ["ack"]


async def test_unknown_job_fails_with_reason() -> None:
    seen, msg = await run_one(MaintenanceTask(task_id="p2", job="defrag"))
    assert seen[-1].type is EventType.FAILED
    assert seen[-1].error is not None
    assert "unknown maintenance job 'defrag'" in seen[-1].error.message
    assert msg.settled == ["term"]


@pytest.mark.parametrize("body", [b"not json", b'{"task_id": "p3", "job": 7}'])
async def test_unreadable_task_is_terminated_not_retried(body: bytes) -> None:
    _seen, msg = await run_one(body)
    assert msg.settled == ["term"]
