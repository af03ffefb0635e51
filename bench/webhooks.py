"""Webhook deliveries one maintenance replica sustains to a local receiver.

A real `helpline run maintenance` (one replica, its default `HELPLINE_WEBHOOK_CONCURRENCY`
unless set) against its own nats-server; one webhook; N deliveries (`webhook` tasks, each
with its queued record, as the gateway's tracker submits them) queued at once; a receiver
in a process of its own (a bare asyncio HTTP/1.1 server, keep-alive, answering 200 at
once) counts them. The figure is N over the time from the first delivery received to the
last, and the replica's CPU seconds per 1,000 deliveries (each signed, guarded, sent,
noted in `deliveries`, reported as an event).

    uv run python bench/webhooks.py [--deliveries 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from results import capture

from helpline.cli.natsserver import NatsServer, free_port
from helpline.common.bus import Bus
from helpline.common.layout import BusLayout
from helpline.common.subjects import Kind
from helpline.common.taskstore import TaskStore
from helpline.common.webhooks import WebhookEvent, WebhookStore, delivery_task, new_webhook
from helpline.testing import ServiceProcess

RECEIVER = r"""
import asyncio, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
seen = []
done = asyncio.Event()

async def serve(reader, writer):
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        seen.append(time.time())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        if len(seen) == n:
            done.set()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    print("ready", flush=True)
    await done.wait()
    print(seen[0], seen[-1], flush=True)
    server.close()

asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


async def run(deliveries: int) -> None:
    prefix = "bench"
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as nats_server:
        port = free_port()
        receiver = subprocess.Popen(
            [sys.executable, "-c", RECEIVER, str(deliveries), str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        bus = Bus(BusLayout(prefix=prefix))
        await bus.connect(nats_server.url, name="bench-webhooks")
        await bus.bootstrap()
        hook = await WebhookStore(bus.buckets).create(
            new_webhook(f"http://127.0.0.1:{port}/hook", [WebhookEvent.TASK_SUCCEEDED], None)
        )
        replica = ServiceProcess(
            "maintenance",
            nats_server.url,
            Path(tmp) / "maintenance",
            {
                "HELPLINE_BUS_PREFIX": prefix,
                "HELPLINE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
                "HELPLINE_MAINTENANCE_RECONCILE_EVERY_S": "0",
                "HELPLINE_MAINTENANCE_SOURCES_EVERY_S": "0",
                "HELPLINE_LOG_LEVEL": "WARNING",
            },
        ).start()
        try:
            data = {"task_id": "0" * 32, "kind": "scrape", "status": "succeeded"}
            tasks = [
                delivery_task(hook, WebhookEvent.TASK_SUCCEEDED, data, str(i), None)
                for i in range(deliveries)
            ]
            cpu_before = cpu_seconds(replica.pid)
            await TaskStore(bus).submit_many(Kind.WEBHOOK, tasks)
            out, _ = await asyncio.to_thread(receiver.communicate, timeout=600)
            cpu = cpu_seconds(replica.pid) - cpu_before
        finally:
            replica.terminate()
            await bus.close()
        first, last = map(float, out.split())
    printed = capture("webhooks")
    print(f"deliveries: {deliveries} to one receiver on 127.0.0.1, one maintenance replica")
    print(f"sustained: {deliveries / (last - first):.0f} deliveries/s")
    print(f"replica CPU: {cpu / deliveries * 1000:.2f} s per 1,000 deliveries")
    printed.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    asyncio.run(run(parser.parse_args().deliveries))


if __name__ == "__main__":
    main()
