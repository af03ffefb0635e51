"""The gateway is down while workers finish: a new gateway catches every record up from the events."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from e2e_helpers import eventually
from faults.support import (
    gateway,
    layout,
    pending,
    service,
    settle,
    start_all,
    start_gateway,
)

from helpline.cli.natsserver import NatsServer
from helpline.common.subjects import Kind

pytestmark = pytest.mark.slow

PINGS = 200


async def test_gateway_down_while_results_arrive(
    nats_server: NatsServer, prefix: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    settings = layout()
    worker = service("maintenance", nats_server.url, tmp_path / "maintenance", prefix, settings)
    try:
        first = await start_gateway(nats_server.url, prefix, tmp_path, settings, name="gw-a")
        try:
            await start_all(worker)
            submitted: list[str] = []
            for _ in range(PINGS):
                response = await first.client.post("/api/v1/maintenance/ping")
                assert response.status_code == 202, response.text
                submitted.append(response.json()["task_id"])
        finally:
            await first.stop()

        # The worker finishes the pings with no gateway to read its events.
        async def drained() -> bool:
            return (await pending(nats_server.url, prefix, Kind.MAINTENANCE))[0] == 0

        await eventually(drained, timeout_s=30)
        await asyncio.sleep(1.0)  # the last ping's events
        queued, piled_up = await pending(nats_server.url, prefix, Kind.MAINTENANCE)
        assert queued == 0, f"{queued} pings still queued: the worker did not drain them"

        async with gateway(nats_server.url, prefix, tmp_path, settings, name="gw-b") as second:
            # Generous: an event gateway A had fetched as it stopped comes back only after
            # the tracker's ack wait (30 s).
            tally = await settle(second.client, submitted, timeout_s=45)
    finally:
        worker.terminate()
    print(
        f"FAULT gateway-down: tasks={tally.tasks} events_waiting={piled_up} "
        f"succeeded={tally.succeeded} lost={tally.lost} stuck={tally.stuck} "
        f"failed={tally.failed} catch_up_s={tally.seconds:.1f} "
        f"seconds={time.monotonic() - started:.1f}"
    )
    assert len(set(submitted)) == PINGS
    assert piled_up > 0, "the events should have waited for a gateway"
    assert tally.succeeded == PINGS, tally.unfinished()
