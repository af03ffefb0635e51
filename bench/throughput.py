"""Task throughput: Helpline against bare nats-py and Celery + Redis, in one run.

Helpline: N no-op maintenance pings submitted over the gateway's REST API (64 at a time)
to a real `helpline run gateway` and `helpline run maintenance`, counted when their task
records are terminal (watched in the KV bucket). Bare nats-py: N messages published to a
work-queue stream with PubAck, a worker process pulls and replies. Celery + Redis: N
`delay()` calls to a threaded worker, counted when their results are back. Also the idle
round trip of one task through the library (record created, published, run, record
terminal), 200 times.

    uv run python bench/throughput.py [--tasks 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nats

from helpline.common.bus import Bus, BusLayout, make_broker
from helpline.common.messages import MaintenanceTask, new_task_id
from helpline.common.natsserver import NatsServer, free_port
from helpline.common.subjects import Kind, bucket
from helpline.common.testing import ServiceProcess

TERMINAL = {"succeeded", "failed", "expired", "cancelled"}
BENCH = Path(__file__).resolve().parent


async def watch_terminal(nats_url: str, ids_done: dict[str, float], stop: asyncio.Event) -> None:
    nc = await nats.connect(nats_url)
    kv = await nc.jetstream().key_value(bucket("tasks"))
    watcher = await kv.watchall()
    async for entry in watcher:
        if stop.is_set():
            break
        if entry is None or entry.value is None:
            continue
        try:
            status = json.loads(entry.value).get("status")
        except ValueError:
            continue
        if status in TERMINAL and entry.key not in ids_done:
            ids_done[entry.key] = time.perf_counter()
    await nc.close()


async def helpline_throughput(nats_url: str, gateway_url: str, n: int) -> float:
    done: dict[str, float] = {}
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_terminal(nats_url, done, stop))
    await asyncio.sleep(0.5)
    submitted: list[str] = []
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60, limits=limits) as client:

        async def submit(count: int) -> None:
            for _ in range(count):
                response = await client.post("/api/v1/maintenance/ping")
                response.raise_for_status()
                submitted.append(response.json()["task_id"])

        await asyncio.gather(*(submit(n // 64 + (1 if i < n % 64 else 0)) for i in range(64)))
    while len([t for t in submitted if t in done]) < n:
        await asyncio.sleep(0.05)
    elapsed = max(done[t] for t in submitted) - started
    stop.set()
    watcher.cancel()
    return n / elapsed


async def library_round_trip(nats_url: str, samples: int) -> list[float]:
    """Submit one task at a time through the library and wait for its terminal record."""
    broker = make_broker(nats_url, name="bench")
    await broker.connect()
    bus = Bus(broker, BusLayout())
    kv = await bus.kv("tasks")
    done: dict[str, float] = {}
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_terminal(nats_url, done, stop))
    await asyncio.sleep(0.5)
    times = []
    for _ in range(samples):
        task = MaintenanceTask(task_id=new_task_id(), job="ping")
        started = time.perf_counter()
        await kv.create(
            task.task_id,
            json.dumps(
                {"task_id": task.task_id, "kind": "maintenance", "status": "queued"}
            ).encode(),
        )
        await bus.submit(Kind.MAINTENANCE, task)
        while task.task_id not in done:
            await asyncio.sleep(0)
        times.append((done[task.task_id] - started) * 1000)
    stop.set()
    watcher.cancel()
    await broker.stop()
    return times


async def nats_throughput(nats_url: str, n: int) -> float:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench.tasks"], retention="workqueue")
    worker = subprocess.Popen(
        [sys.executable, str(BENCH / "nats_peer.py"), nats_url, "BENCH", "bench.tasks", "4"]
    )
    replies = 0
    finished = asyncio.Event()

    async def on_reply(_msg: object) -> None:
        nonlocal replies
        replies += 1
        if replies == n:
            finished.set()

    await nc.subscribe("bench.replies", cb=on_reply)
    await asyncio.sleep(1.0)
    started = time.perf_counter()
    sem = asyncio.Semaphore(64)

    async def publish(i: int) -> None:
        async with sem:
            await js.publish("bench.tasks", b"%d" % i, headers={"reply-to": "bench.replies"})

    await asyncio.gather(*(publish(i) for i in range(n)))
    await asyncio.wait_for(finished.wait(), 300)
    elapsed = time.perf_counter() - started
    worker.terminate()
    worker.wait()
    await nc.close()
    return n / elapsed


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
    args = parser.parse_args()
    n = args.tasks
    with tempfile.TemporaryDirectory(prefix="helpline-throughput-") as tmp:
        root = Path(tmp)
        with NatsServer(root / "nats") as server:
            env = {"HELPLINE_LOG_LEVEL": "WARNING", "HELPLINE_MAINTENANCE_CONCURRENCY": "64"}
            with (
                ServiceProcess("gateway", server.url, root / "gw", env) as gateway,
                ServiceProcess("maintenance", server.url, root / "mt", env),
            ):
                gateway_url = f"http://127.0.0.1:{gateway.port}"
                trip = asyncio.run(library_round_trip(server.url, 200))
                helpline = asyncio.run(helpline_throughput(server.url, gateway_url, n))
        with NatsServer(root / "nats-bare") as server:
            bare = asyncio.run(nats_throughput(server.url, n))
    celery, why = celery_throughput(n)
    print()
    print(f"{n} no-op tasks, 2 cores")
    print(f"Helpline (REST submit, durable records):   {helpline:8.0f} tasks/s")
    print(
        f"bare nats-py (work queue + reply):         {bare:8.0f} tasks/s   Helpline/bare = {helpline / bare:.2f}"
    )
    if celery is not None:
        print(
            f"Celery + Redis (threads, result backend):  {celery:8.0f} tasks/s   Helpline/Celery = {helpline / celery:.2f}"
        )
    else:
        print(f"Celery + Redis: not measured ({why})")
    print(
        f"idle round trip through the library: p50 {statistics.median(trip):.2f} ms, "
        f"p99 {sorted(trip)[int(len(trip) * 0.99) - 1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
