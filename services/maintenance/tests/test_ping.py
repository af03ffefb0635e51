"""The maintenance handler alone: a fake delivery in, the published events recorded."""

from __future__ import annotations

from typing import Any

import pytest
from nats.errors import NotJSMessageError

from helpline.common.bus import Bus
from helpline.common.layout import BusLayout
from helpline.common.messages import EventType, MaintenanceTask, TaskEvent
from helpline.common.retrypolicy import RetryPolicy
from helpline.common.subjects import Kind, events_stream
from helpline.common.worker import Delivery
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
    seen: list[TaskEvent] = []
    events = BusLayout(prefix="unit").event_subject(Kind.MAINTENANCE)

    async def publish(
        subject: str, payload: bytes, *, stream: str, headers: dict[str, str]
    ) -> None:
        if subject == events:
            assert stream == events_stream("unit")
            assert headers["Nats-Msg-Id"]
            seen.append(TaskEvent.model_validate_json(payload))

    bus = Bus(BusLayout(prefix="unit"), publish=publish)
    (consumer,) = build_consumers(bus, concurrency=1, policy=RetryPolicy(max_attempts=1))
    msg = FakeMsg(task if isinstance(task, bytes) else task.model_dump_json().encode())
    await consumer.handle(Delivery(msg))  # type: ignore[arg-type]
    return seen, msg


async def test_ping_succeeds_with_pong() -> None:
    seen, msg = await run_one(MaintenanceTask(task_id="p1", job="ping"))
    # Done within START_REPORT_AFTER_S: only the outcome is reported, with the start time.
    assert [e.type for e in seen] == [EventType.SUCCEEDED]
    assert seen[-1].started_at is not None
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


async def test_a_longer_task_reports_its_start_while_it_runs() -> None:
    seen, msg = await run_one(MaintenanceTask(task_id="p4", job="ping", params={"delay_ms": 150}))
    assert [e.type for e in seen] == [EventType.STARTED, EventType.SUCCEEDED]
    assert seen[0].at < seen[1].at
    assert msg.settled == ["ack"]
