"""The FastStream peer for bench/throughput.py: the bare peer's worker written the FastStream
way (a pull subscriber, batches of 64, explicit acks, the reply published by the broker),
as Helpline's services would be hosted if FastStream ran them. Its tracing middleware is on,
as Helpline's own tracing is (no exporter: spans are made and dropped)."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from faststream.nats.opentelemetry import NatsTelemetryMiddleware


async def main(url: str, stream: str, subject: str) -> None:
    quiet = logging.getLogger("faststream-peer")
    quiet.setLevel(logging.WARNING)  # FastStream logs every message at INFO
    broker = NatsBroker(url, middlewares=[NatsTelemetryMiddleware()], logger=quiet)

    @broker.subscriber(
        subject,
        stream=JStream(stream, declare=False),
        durable="fs-bench-worker",
        pull_sub=PullSub(batch_size=64, timeout=0.05),
        ack_policy=AckPolicy.MANUAL,
    )
    async def work(body: Any, msg: NatsMessage) -> None:
        await broker.publish(b"ok", msg.headers["reply-to"])
        await msg.ack()

    await broker.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
