"""The typed KV layer: a process's bound buckets, and the small stores built on them.

Services reach a bucket through a store of helpline.common (`TaskStore`, `AnswerCache`,
`CrawlLedger`, `PageStates`, `Replicas`, `Deferrals`, `Cancellations`), never by a
name: `Buckets.get` takes only a `subjects.Bucket`.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from helpline.common.kvscan import kv_entries
from helpline.common.subjects import Bucket

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from helpline.common.layout import BusLayout


async def kv_get(kv: KeyValue, key: str) -> tuple[bytes, int] | None:
    """A key's value and revision, or None when absent or deleted."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    return entry.value, entry.revision or 0


#: How often `kv_create` asks again when a refused create cannot read the key it met.
CREATE_TRIES = 3


async def kv_create(kv: KeyValue, key: str, value: bytes) -> int:
    """`kv.create`: the new key's revision, or `KeyWrongLastSequenceError` when it exists.

    nats-py's create, refused because the key exists, reads the key to tell a deleted one
    (created again) from a live one (the refusal re-raised). On a replicated bucket that
    read can reach a replica that has not applied the write yet, and KeyNotFoundError
    escapes instead: seen as a crawl page's attempt failing with "unexpected
    KeyNotFoundError" on the three-server cluster. Asked again; if the read still
    disagrees, the key is taken as existing, as the refusal said."""
    for attempt in range(CREATE_TRIES):
        try:
            return int(await kv.create(key, value))
        except KeyNotFoundError:
            await asyncio.sleep(0.02 * (attempt + 1))
    raise KeyWrongLastSequenceError(f"{key} exists (refused; its read found nothing)")


class Buckets:
    """Every bucket of one deployment, bound once per process."""

    def __init__(self, layout: BusLayout) -> None:
        self._layout = layout
        self._js: JetStreamContext | None = None
        self._bound: dict[Bucket, KeyValue] = {}

    def attach(self, js: JetStreamContext, bound: dict[Bucket, KeyValue] | None = None) -> None:
        """Use this JetStream context (and the buckets declaring it just bound)."""
        self._js = js
        self._bound.update(bound or {})

    async def get(self, name: Bucket) -> KeyValue:
        """The bucket, bound on first use."""
        kv = self._bound.get(name)
        if kv is None:
            assert self._js is not None, "the bus is not connected"
            kv = self._bound[name] = await self._js.key_value(self._layout.bucket(name))
        return kv


class Deferrals:
    """Per task, how many deliveries waited on an open breaker (not attempts)."""

    def __init__(self, buckets: Buckets) -> None:
        self._buckets = buckets

    async def count(self, task_id: str) -> int:
        """Deliveries of this task that only waited."""
        current = await kv_get(await self._buckets.get(Bucket.DEFERRALS), task_id)
        return int(current[0]) if current else 0

    async def add(self, task_id: str) -> None:
        """Count one more (compare-and-swap: replicas may count the same task)."""
        kv = await self._buckets.get(Bucket.DEFERRALS)
        while True:
            current = await kv_get(kv, task_id)
            try:
                if current is None:
                    await kv.create(task_id, b"1")
                else:
                    await kv.update(task_id, str(int(current[0]) + 1).encode(), last=current[1])
            except KeyWrongLastSequenceError:
                continue
            return


class Replicas:
    """Replica heartbeats: each process's report, expiring when it stops beating."""

    def __init__(self, buckets: Buckets) -> None:
        self._buckets = buckets

    async def beat(self, replica_id: str, report: dict[str, Any]) -> None:
        """Store this replica's report (the bucket's TTL forgets a silent one)."""
        await (await self._buckets.get(Bucket.REPLICAS)).put(
            replica_id, json.dumps(report).encode()
        )

    async def leave(self, replica_id: str) -> None:
        """Forget this replica now (a clean stop)."""
        await (await self._buckets.get(Bucket.REPLICAS)).delete(replica_id)

    async def all(self) -> list[dict[str, Any]]:
        """What every live replica last reported, ordered by replica id."""
        kv = await self._buckets.get(Bucket.REPLICAS)
        latest = {entry.key: entry.value async for entry in kv_entries(kv) if entry.value}
        return [json.loads(latest[key]) for key in sorted(latest)]
