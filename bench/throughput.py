"""Task throughput: Helpline against bare nats-py and Celery + Redis, in one run.

Helpline, two ways, each against a real `helpline run gateway` (the tracker writes the
records) and `helpline run maintenance` (runs the pings):
- through the library, as Celery's `delay()` and the bare nats-py peer are driven: N no-op
  maintenance pings submitted with their queued records (`TaskStore.submit_many`);
- through the REST API: N `POST /api/v1/maintenance/ping` from 64 keep-alive connections
  (a minimal HTTP/1.1 client, so that the client's own cost stays out of the figure).
Both are counted when every task's record is terminal (watched in the KV bucket).
Bare nats-py: N messages published to a work-queue stream with PubAck, a worker process
pulls and replies. FastStream: the same work through FastStream's publisher and a pull
subscriber with explicit acks (bench/faststream_peer.py), the figure behind Helpline not
hosting its services on FastStream (docs/architecture.md). Celery + Redis: N `delay()` calls to a threaded worker, counted when
their results are back. Each is run `--rounds` times and the median
kept (the bare peer in particular varies from run to run). Also the idle round trip of
one task through the library, 200 times after 20 not counted: until the caller has the task's outcome
(`TaskStore.run`), and until its record is terminal; and the CPU seconds each process
spent per 1,000 tasks.

    uv run python bench/throughput.py [--tasks 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from loadgen import submit_pings
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from results import capture

from helpline.cli.natsserver import NatsServer, free_port
from helpline.common.bus import Bus
from helpline.common.layout import BusLayout
from helpline.common.messages import MaintenanceTask, new_task_id
from helpline.common.records import TERMINAL_STATUSES
from helpline.common.subjects import Kind, bucket
from helpline.common.taskstore import TaskStore
from helpline.testing import TEST_ADMIN_KEY, ServiceProcess

BENCH = Path(__file__).resolve().parent
CONNECTIONS = 64
WARM_UP = 20


class Terminal:
    """Which task records are terminal, from the tasks bucket's writes as they happen.

    The bench's instrument, so kept lean: a push consumer from the present on whose
    callback skips queued and running records unparsed and counts down the ids awaited
    (nats-py's KV watcher builds an entry and queues it for every write)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._missing: set[str] = set()
        self._all_in: asyncio.Future[None] | None = None
        self._nc: nats.NATS | None = None
        self._prefix = f"$KV.{bucket('tasks')}."

    async def start(self, nats_url: str) -> None:
        self._nc = await nats.connect(nats_url)
        await self._nc.jetstream().subscribe(
            self._prefix + ">",
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            cb=self._written,
        )

    async def _written(self, msg: Msg) -> None:
        value = msg.data
        if not value or b'"status":"queued"' in value or b'"status":"running"' in value:
            return
        key = msg.subject[len(self._prefix) :]
        if key in self.at or json.loads(value).get("status") not in TERMINAL_STATUSES:
            return
        self.at[key] = time.perf_counter()
        self._missing.discard(key)
        if not self._missing and self._all_in is not None and not self._all_in.done():
            self._all_in.set_result(None)

    async def wait_for(self, ids: list[str]) -> float:
        """When the last of `ids` became terminal."""
        self._missing = {t for t in ids if t not in self.at}
        if self._missing:
            self._all_in = asyncio.get_running_loop().create_future()
            await self._all_in
        return max(self.at[t] for t in ids)

    async def stop(self) -> None:
        if self._nc is not None:
            await self._nc.close()


def pings(n: int) -> list[MaintenanceTask]:
    return [MaintenanceTask(task_id=new_task_id(), job="ping") for _ in range(n)]


async def library_throughput(nats_url: str, n: int) -> float:
    """N pings submitted through the library (records + publish, pipelined)."""
    bus = Bus(BusLayout())
    await bus.connect(nats_url, name="bench")
    store = TaskStore(bus)
    terminal = Terminal()
    await terminal.start(nats_url)
    tasks = pings(n)
    started = time.perf_counter()
    for first in range(0, n, 1000):
        await store.submit_many(Kind.MAINTENANCE, tasks[first : first + 1000])
    last = await terminal.wait_for([t.task_id for t in tasks])
    await terminal.stop()
    await bus.close()
    return n / (last - started)


async def rest_throughput(nats_url: str, port: int, n: int) -> float:
    """N pings submitted as POST /api/v1/maintenance/ping over 64 keep-alive connections."""
    terminal = Terminal()
    await terminal.start(nats_url)
    started = time.perf_counter()
    submitted = await submit_pings(f"http://127.0.0.1:{port}", n, CONNECTIONS, key=TEST_ADMIN_KEY)
    last = await terminal.wait_for(submitted)
    await terminal.stop()
    return n / (last - started)


async def library_round_trips(nats_url: str, samples: int) -> tuple[list[float], list[float]]:
    """One task at a time through the library (`TaskStore.run`): milliseconds until the
    caller has its outcome, and until its record is terminal in the bucket."""
    bus = Bus(BusLayout())
    await bus.connect(nats_url, name="bench")
    store = TaskStore(bus)
    terminal = Terminal()
    await terminal.start(nats_url)
    outcome_ms, record_ms = [], []
    for task in pings(WARM_UP):  # the first of each process's paths: not counted
        await store.run(Kind.MAINTENANCE, task)
    for task in pings(samples):
        started = time.perf_counter()
        outcome = await store.run(Kind.MAINTENANCE, task)
        outcome_ms.append((time.perf_counter() - started) * 1000)
        assert outcome.type == "succeeded", outcome
        record_ms.append((await terminal.wait_for([task.task_id]) - started) * 1000)
    await store.close()
    await terminal.stop()
    await bus.close()
    return outcome_ms, record_ms


def p50_p99(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"p50 {statistics.median(ordered):.2f} ms, p99 {ordered[int(len(ordered) * 0.99) - 1]:.2f} ms"


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def per_thousand(before: dict[str, float], after: dict[str, float], n: int) -> str:
    return ", ".join(f"{k} {(after[k] - before[k]) * 1000 / n:.2f}" for k in before)


async def peer_throughput(
    nats_url: str,
    n: int,
    name: str,
    worker: list[str],
    publish: Callable[[int, str], Awaitable[object]],
    *,
    extra: tuple[str, ...] = (),
    settle_s: float = 1.0,
) -> float:
    """N messages through a peer's worker process (work-queue stream `name`, subject
    `<name>.tasks`), counted when every reply is back on `<name>.replies`; `publish(i,
    reply_subject)` sends one."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    subject = f"{name.lower()}.tasks"
    await js.add_stream(name=name, subjects=[subject], retention="workqueue")
    process = subprocess.Popen([sys.executable, *worker, nats_url, name, subject, *extra])
    replies = 0
    finished = asyncio.Event()

    async def on_reply(_msg: object) -> None:
        nonlocal replies
        replies += 1
        if replies == n:
            finished.set()

    await nc.subscribe(f"{name.lower()}.replies", cb=on_reply)
    await asyncio.sleep(settle_s)
    started = time.perf_counter()
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            await publish(i, f"{name.lower()}.replies")

    await asyncio.gather(*(one(i) for i in range(n)))
    await asyncio.wait_for(finished.wait(), 300)
    elapsed = time.perf_counter() - started
    process.terminate()
    process.wait()
    await nc.close()
    return n / elapsed


async def nats_throughput(nats_url: str, n: int) -> float:
    """Bare nats-py: JetStream publishes with PubAck, a nats-py worker (bench/nats_peer.py)."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()

    async def publish(i: int, reply: str) -> object:
        return await js.publish("bench.tasks", b"%d" % i, headers={"reply-to": reply})

    try:
        return await peer_throughput(
            nats_url, n, "BENCH", [str(BENCH / "nats_peer.py")], publish, extra=("4",)
        )
    finally:
        await nc.close()


async def faststream_throughput(nats_url: str, n: int) -> float:
    """The bare peer's work through FastStream: its publisher (JetStream, acknowledged) on
    this side, its pull subscriber in the worker (bench/faststream_peer.py)."""
    from faststream.nats import NatsBroker

    quiet = logging.getLogger("faststream-bench")
    quiet.setLevel(logging.WARNING)  # FastStream logs every message at INFO
    broker = NatsBroker(nats_url, logger=quiet)
    await broker.connect()

    async def publish(i: int, reply: str) -> object:
        return await broker.publish(
            b"%d" % i, "fsbench.tasks", stream="FSBENCH", headers={"reply-to": reply}
        )

    try:
        return await peer_throughput(
            nats_url, n, "FSBENCH", [str(BENCH / "faststream_peer.py")], publish, settle_s=2.0
        )
    finally:
        await broker.stop()


def celery_throughput(n: int) -> tuple[float | None, str]:
    redis_url = "redis://127.0.0.1:6379/15"
    redis_server: subprocess.Popen[bytes] | None = None
    try:
        import redis

        redis.Redis.from_url(redis_url).ping()
    except Exception:
        if not shutil.which("redis-server"):
            return None, "no Redis reachable and no redis-server to start"
        port = free_port()
        redis_server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        redis_url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
    env = {**os.environ, "BENCH_REDIS_URL": redis_url}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_peer",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            "8",
            "--loglevel",
            "WARNING",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=BENCH,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.environ["BENCH_REDIS_URL"] = redis_url
        sys.path.insert(0, str(BENCH))
        from celery_peer import app, ping

        app.conf.broker_url = app.conf.result_backend = redis_url
        ping.delay().get(timeout=60)  # worker up
        started = time.perf_counter()
        results = [ping.delay() for _ in range(n)]
        for result in results:
            result.get(timeout=300)
        return n / (time.perf_counter() - started), ""
    finally:
        worker.terminate()
        worker.wait()
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (median kept)")
    args = parser.parse_args()
    n = args.tasks
    library, rest, bare, fast = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="helpline-throughput-") as tmp:
        root = Path(tmp)
        with NatsServer(root / "nats") as server:
            env = {"HELPLINE_LOG_LEVEL": "WARNING", "HELPLINE_MAINTENANCE_CONCURRENCY": "64"}
            with (
                ServiceProcess(
                    "gateway",
                    server.url,
                    root / "gw",
                    {**env, "HELPLINE_ADMIN_KEY": TEST_ADMIN_KEY},
                ) as gateway,
                ServiceProcess("maintenance", server.url, root / "mt", env) as worker,
            ):
                pids = {
                    "bench": os.getpid(),
                    "gateway": gateway.pid,
                    "maintenance": worker.pid,
                    "nats-server": server.pid,
                }
                outcome_ms, record_ms = asyncio.run(library_round_trips(server.url, 200))
                for round_ in range(args.rounds):
                    before = cpu_of(pids)
                    library.append(asyncio.run(library_throughput(server.url, n)))
                    middle = cpu_of(pids)
                    rest.append(asyncio.run(rest_throughput(server.url, gateway.port, n)))
                    after = cpu_of(pids)
                    print(
                        f"round {round_ + 1}: library {library[-1]:.0f}/s, REST {rest[-1]:.0f}/s",
                        flush=True,
                    )
        for round_ in range(args.rounds):
            with NatsServer(root / f"nats-bare-{round_}") as server:
                bare.append(asyncio.run(nats_throughput(server.url, n)))
            with NatsServer(root / f"nats-faststream-{round_}") as server:
                fast.append(asyncio.run(faststream_throughput(server.url, n)))
            print(
                f"round {round_ + 1}: bare nats-py {bare[-1]:.0f}/s, FastStream {fast[-1]:.0f}/s",
                flush=True,
            )
    celery, why = celery_throughput(n)
    lib, api, peer, fs = (statistics.median(x) for x in (library, rest, bare, fast))
    printed = capture("throughput")
    print()
    print(f"{n} no-op tasks, {os.cpu_count()} cores, median of {args.rounds} rounds")
    print(
        f"Helpline, library submit (durable records): {lib:8.0f} tasks/s   Helpline/bare = {lib / peer:.2f}"
    )
    print(
        f"Helpline, REST submit (durable records):    {api:8.0f} tasks/s   Helpline/bare = {api / peer:.2f}"
    )
    print(f"bare nats-py (work queue + reply):           {peer:8.0f} tasks/s")
    print(
        f"FastStream (the same, pull subscriber):      {fs:8.0f} tasks/s   FastStream/bare = {fs / peer:.2f}"
    )
    if celery is not None:
        print(
            f"Celery + Redis (threads, result backend):    {celery:8.0f} tasks/s   "
            f"Helpline library/Celery = {lib / celery:.2f}, REST/Celery = {api / celery:.2f}"
        )
    else:
        print(f"Celery + Redis: not measured ({why})")
    print(f"idle round trip through the library, outcome to the caller: {p50_p99(outcome_ms)}")
    print(f"idle round trip through the library, record terminal:      {p50_p99(record_ms)}")
    print(f"CPU seconds per 1,000 tasks (last round), library: {per_thousand(before, middle, n)}")
    print(f"CPU seconds per 1,000 tasks (last round), REST:    {per_thousand(middle, after, n)}")
    printed.save()


if __name__ == "__main__":
    main()
