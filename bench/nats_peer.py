"""The bare nats-py peer for bench/throughput.py: a worker that pulls from a work-queue stream
and replies, nothing else (no records, no events, no tracing)."""

from __future__ import annotations

import asyncio
import sys

import nats


async def main(url: str, stream: str, subject: str, concurrency: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, durable="bench-worker", stream=stream)

    async def work() -> None:
        while True:
            try:
                msgs = await sub.fetch(64, timeout=0.05)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                await nc.publish(msg.headers["reply-to"] if msg.headers else "", b"ok")
                await msg.ack()

    await asyncio.gather(*(work() for _ in range(concurrency)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
