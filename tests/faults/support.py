"""Shared pieces of the fault tests: worker environments, a gateway-only host, record tallies."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
from e2e_helpers import TERMINAL

from helpline.common import subjects
from helpline.common.bus import servers
from helpline.common.runtime import Host
from helpline.common.subjects import Kind
from helpline.gateway.app import GatewayComponent
from helpline.gateway.settings import GatewaySettings
from helpline.testing import TEST_ADMIN_KEY, ServiceProcess, bearer

# Settings every process of one test shares: the bus layout (storage, ack wait) is declared
# by whoever starts first and updated by the others, so they must agree.
COMMON: dict[str, object] = {
    "file_storage": False,
    # The gateways' admin key (the test's clients send it).
    "admin_key": TEST_ADMIN_KEY,
    "backoff_base_s": 0.05,
    "backoff_cap_s": 0.5,
    "max_deliver": 10,
    "ack_wait_s": 3.0,
    "shutdown_grace_s": 5.0,
    "scraper_allowed_hosts": "127.0.0.1",
    "scraper_timeout_s": 5.0,
    "embed_threads": 1,
    "maintenance_reconcile_every_s": 0.0,
    "maintenance_watchdog_every_s": 0.0,
}


def layout(**overrides: object) -> dict[str, object]:
    return {**COMMON, **overrides}


def worker_env(prefix: str, settings: dict[str, object]) -> dict[str, str]:
    """The same settings as `HELPLINE_` environment variables, for `helpline run`."""
    env = {"HELPLINE_BUS_PREFIX": prefix}
    for name, value in settings.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"HELPLINE_{name.upper()}"] = text
    return env


def service(
    name: str, nats_url: str, data_dir: Path, prefix: str, settings: dict[str, object]
) -> ServiceProcess:
    return ServiceProcess(name, nats_url, data_dir, worker_env(prefix, settings))


async def start_all(*processes: ServiceProcess) -> None:
    """Start child processes side by side, off the event loop (the gateway keeps tracking)."""
    await asyncio.gather(*(asyncio.to_thread(p.start, 90.0) for p in processes))


@dataclass
class Gateway:
    host: Host
    client: httpx.AsyncClient

    async def stop(self) -> None:
        await self.client.aclose()
        await self.host.stop()


async def start_gateway(
    nats_url: str, prefix: str, data_dir: Path, settings: dict[str, object], name: str
) -> Gateway:
    """The gateway alone in this process (API + tracker), the workers being child processes."""
    fields = GatewaySettings.model_fields
    gateway_settings = GatewaySettings(
        nats_url=nats_url,
        bus_prefix=prefix,
        data_dir=data_dir,
        **{k: v for k, v in settings.items() if k in fields},  # type: ignore[arg-type]
    )
    component = GatewayComponent(gateway_settings)
    host = Host(gateway_settings, [component], name=f"{name}-{prefix}")
    await host.start()
    client = httpx.AsyncClient(
        # As over real HTTP: an unexpected error is a 500 answer, not an exception here.
        transport=httpx.ASGITransport(app=component.app, raise_app_exceptions=False),
        base_url="http://gateway",
        timeout=30,
        headers=bearer(TEST_ADMIN_KEY),
    )
    return Gateway(host=host, client=client)


@contextlib.asynccontextmanager
async def gateway(
    nats_url: str, prefix: str, data_dir: Path, settings: dict[str, object], name: str = "gw"
) -> AsyncIterator[Gateway]:
    running = await start_gateway(nats_url, prefix, data_dir, settings, name)
    try:
        yield running
    finally:
        await running.stop()


async def submit_all(
    client: httpx.AsyncClient, path: str, bodies: list[dict[str, str]]
) -> list[str]:
    """POST every body (a few at a time); every one must be accepted."""
    ids: list[str] = [""] * len(bodies)
    gate = asyncio.Semaphore(8)

    async def one(i: int, body: dict[str, str]) -> None:
        async with gate:
            response = await client.post(path, json=body)
        assert response.status_code == 202, response.text
        ids[i] = response.json()["task_id"]

    await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    return ids


@dataclass
class Tally:
    """Where every task ended: `lost` never started (queued or no record), `stuck` still
    running or retrying, `failed` terminal but not succeeded."""

    tasks: int
    statuses: Counter[str]
    records: dict[str, dict[str, object]]
    seconds: float

    @property
    def succeeded(self) -> int:
        return self.statuses["succeeded"]

    @property
    def lost(self) -> int:
        return self.statuses["queued"] + self.statuses["missing"]

    @property
    def stuck(self) -> int:
        return self.statuses["running"] + self.statuses["retrying"]

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s in TERMINAL and s != "succeeded")

    def unfinished(self, limit: int = 5) -> list[dict[str, object]]:
        return [r for r in self.records.values() if r.get("status") != "succeeded"][:limit]


async def settle(
    client: httpx.AsyncClient,
    task_ids: Iterable[str],
    timeout_s: float,
    *,
    quiet: Callable[[], Awaitable[bool]] | None = None,
) -> Tally:
    """Poll the API until every task is terminal (terminal is final) or the time is up.

    With `quiet` (a cheap check that nothing is left to do), records are read only once it
    holds, so thousands of reads do not compete with the work for the CPU.
    """
    ids = list(task_ids)
    records: dict[str, dict[str, object]] = {}
    open_ids = set(ids)
    gate = asyncio.Semaphore(16)

    async def read(task_id: str) -> None:
        async with gate:
            response = await client.get(f"/api/v1/tasks/{task_id}")
        if response.status_code == 404:
            records[task_id] = {"task_id": task_id, "status": "missing"}
            return
        assert response.status_code == 200, response.text
        records[task_id] = response.json()
        if records[task_id]["status"] in TERMINAL:
            open_ids.discard(task_id)

    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        out_of_time = time.monotonic() >= deadline
        if quiet is None or out_of_time or await quiet():
            await asyncio.gather(*(read(t) for t in list(open_ids)))
        if not open_ids or out_of_time:
            break
        await asyncio.sleep(0.5)
    statuses = Counter(str(records[t]["status"]) for t in ids)
    return Tally(len(ids), statuses, records, seconds=time.monotonic() - started)


async def pending(nats_url: str, prefix: str, kind: Kind) -> tuple[int, int]:
    """(task messages waiting in `kind`'s stream, events the tracker has not yet acknowledged)."""
    nc = await nats.connect(servers(nats_url))
    try:
        js = nc.jetstream()
        tasks = await js.stream_info(subjects.stream(kind, prefix))
        tracker = await js.consumer_info(subjects.events_stream(prefix), subjects.TRACKER_CONSUMER)
        return int(tasks.state.messages), int(tracker.num_pending or 0) + int(
            tracker.num_ack_pending or 0
        )
    finally:
        await nc.close()


async def bus_quiet(nats_url: str, prefix: str, kinds: Iterable[Kind]) -> bool:
    """No task of these kinds waits or runs, and the tracker has applied every event."""
    nc = await nats.connect(servers(nats_url))
    try:
        js = nc.jetstream()
        for kind in kinds:
            if (await js.stream_info(subjects.stream(kind, prefix))).state.messages:
                return False
        tracker = await js.consumer_info(subjects.events_stream(prefix), subjects.TRACKER_CONSUMER)
        return not (tracker.num_pending or tracker.num_ack_pending)
    finally:
        await nc.close()
