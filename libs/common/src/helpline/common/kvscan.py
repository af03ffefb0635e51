"""Every stored entry of a KV bucket under a key pattern, and no fewer.

nats-py's `KeyValue.watch` marks the end of what is stored with a None, and that None can
come before entries the server already sent (nats-io/nats.py#842): the watcher compares the
consumer's pending count, 0 once everything is on its way, with the messages it has read
so far, and says "nothing stored" while they are still in flight. A listing that stops at
that None comes back short. Measured here: 2 of 300 ledgers of 40 finished children read
as empty, and a batch whose confirming recount read one stayed unfinished for ever.

`kv_entries` creates an ephemeral pull consumer over the pattern (the last value of each
key, unacknowledged, in memory); the reply that creates it says how many messages it
holds, and exactly that many are pulled, a page per request. What it yields is every entry
stored when it was called (later writes may or may not be among them); if the server stops
answering it raises, it never ends early.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js import api
from nats.js.kv import KV_MARKER_REASON, KV_OP

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

_API = "$JS.API"
#: Messages asked for in one pull request.
PAGE = 1000
#: Headers that mark a deleted or purged key (and, from nats-server 2.11, an expiry marker).
_DELETED_HEADERS = (KV_OP, KV_MARKER_REASON)


@dataclass(frozen=True)
class KvEntry:
    """A key's current value and its revision (the stream sequence that wrote it)."""

    key: str
    value: bytes
    revision: int


async def kv_entries(
    kv: KeyValue, pattern: str = ">", *, page: int = PAGE, timeout_s: float = 5.0
) -> AsyncIterator[KvEntry]:
    """Every key matching `pattern` (NATS wildcards) that has a value, in the order they
    were written; deleted keys are left out. A key rewritten during the listing may come
    twice (its later value last). Raises `TimeoutError` if the server goes quiet before
    all have come."""
    # The bucket's stream and subject prefix: nats-py keeps them private, but they are
    # fixed by the KV design (ADR-8): stream KV_<bucket>, subjects $KV.<bucket>.<key>.
    js, stream, prefix = kv._js, kv._stream, kv._pre
    nc = js._nc
    name = f"scan{uuid.uuid4().hex}"
    info = await js.add_consumer(
        stream,
        api.ConsumerConfig(
            name=name,
            filter_subject=f"{prefix}{pattern}",
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=api.AckPolicy.NONE,
            mem_storage=True,
            # Removed by the server if this reader dies before deleting it.
            inactive_threshold=max(30.0, timeout_s * 2),
        ),
    )
    remaining = info.num_pending or 0
    page = max(1, page)
    arrived: list[Msg] = []
    done: asyncio.Future[None] | None = None
    wanted = 0

    async def collect(msg: Msg) -> None:
        # Runs for each message in turn; a status (no more messages) ends the page early.
        arrived.append(msg)
        if done is not None and not done.done() and (_status(msg) or len(arrived) >= wanted):
            done.set_result(None)

    sub = await nc.subscribe(nc.new_inbox(), cb=collect)
    try:
        while remaining > 0:
            wanted = min(remaining, page)
            done = asyncio.get_running_loop().create_future()
            request = json.dumps({"batch": wanted, "no_wait": True}).encode()
            await nc.publish(
                f"{_API}.CONSUMER.MSG.NEXT.{stream}.{name}", request, reply=sub.subject
            )
            try:
                await asyncio.wait_for(done, timeout_s)
            except TimeoutError as exc:
                raise TimeoutError(
                    f"{stream}: {remaining - len(arrived)} entries of {pattern!r} never came"
                ) from exc
            page_msgs, arrived[:] = list(arrived), []
            ended_early = False
            for msg in page_msgs:
                if _status(msg):
                    ended_early = True
                    continue
                remaining -= 1
                entry = _entry(msg, len(prefix))
                if entry is not None:
                    yield entry
            if ended_early:
                # Fewer than counted: some left the stream since (deleted, purged, or
                # rewritten: a bucket keeps one value a key), or the status was a stray.
                # The consumer says what is left; never more than was counted at first,
                # so that a bucket written all the time is not chased for ever.
                pending = (await js.consumer_info(stream, name)).num_pending or 0
                remaining = min(remaining, pending)
    finally:
        await sub.unsubscribe()
        # Not waited for: the server removes it once inactive anyway.
        with contextlib.suppress(Exception):
            await nc.publish(f"{_API}.CONSUMER.DELETE.{stream}.{name}", b"")


def _status(msg: Msg) -> str | None:
    return msg.headers.get(api.Header.STATUS) if msg.headers else None


def _entry(msg: Msg, prefix_len: int) -> KvEntry | None:
    headers = msg.headers or {}
    if any(h in headers for h in _DELETED_HEADERS):
        return None
    return KvEntry(
        key=msg.subject[prefix_len:], value=msg.data, revision=msg.metadata.sequence.stream
    )
