"""The gateway is down while workers finish: a new gateway catches every record up from the events."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from faults.support import gateway, layout, pending, service, settle, start_all, start_gateway

from helpline.common.natsserver import NatsServer
from helpline.common.subjects import Kind

pytestmark = pytest.mark.slow

PINGS = 200


async def test_gateway_down_while_results_arrive(
    nats_server: NatsServer, prefix: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    settings = layout()
    worker = service("maintenance", nats_server.url, tmp_path / "maintenance", prefix, settings)
    first = await start_gateway(nats_server.url, prefix, tmp_path, settings, name="gw-a")
    try:
        await start_all(worker)
        print("T worker", time.monotonic() - started)
        submitted = []
        for _ in range(PINGS):
            response = await first.client.post("/api/v1/maintenance/ping")
            assert response.status_code == 202, response.text
            submitted.append(response.json()["task_id"])
        print("T submitted", time.monotonic() - started)
        await first.stop()
        print("T stopped", time.monotonic() - started)
        # The worker finishes the pings with no gateway to read its events.
        deadline = time.monotonic() + 30
        while (await pending(nats_server.url, prefix, Kind.MAINTENANCE))[0] and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the last ping's events
        queued, piled_up = await pending(nats_server.url, prefix, Kind.MAINTENANCE)
        assert queued == 0, f"{queued} pings still queued: the worker did not drain them"

        print("T drained", time.monotonic() - started)
        import nats as _n
        from helpline.common import subjects as _s

        _nc = await _n.connect(nats_server.url)
        _ci = await _nc.jetstream().consumer_info(_s.events_stream(prefix), "gateway-tracker")
        print(
            "CI",
            _ci.num_pending,
            _ci.num_ack_pending,
            _ci.num_waiting,
            _ci.delivered,
            _ci.ack_floor,
        )
        await _nc.close()
        async with gateway(nats_server.url, prefix, tmp_path, settings, name="gw-b") as second:
            print("T gw b", time.monotonic() - started)
            _t = await settle(second.client, submitted, timeout_s=5)
            print("AFTER5", _t.statuses, _t.unfinished())
            tally = await settle(second.client, submitted, timeout_s=30)
            print("T settled", time.monotonic() - started)
    finally:
        worker.terminate()
    elapsed = time.monotonic() - started
    print(
        f"FAULT gateway-down: tasks={tally.tasks} events_waiting={piled_up} "
        f"succeeded={tally.succeeded} lost={tally.lost} stuck={tally.stuck} "
        f"failed={tally.failed} seconds={elapsed:.1f}"
    )
    assert len(set(submitted)) == PINGS
    assert piled_up > 0, "the events should have waited for a gateway"
    assert tally.succeeded == PINGS, tally.unfinished()
