"""Creating a key only if absent (`kv.kv_create`) against a real nats-server, also when the
read nats-py's create makes after a refusal finds nothing, as a replica of a three-server
bucket that has not applied the write yet answers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from helpline.common.bus import Bus
from helpline.common.kv import kv_create
from helpline.common.subjects import Bucket


async def test_a_new_key_is_created_an_existing_one_refused_a_deleted_one_made_again(
    bus: Bus,
) -> None:
    kv = await bus.buckets.get(Bucket.CRAWLS)
    first = await kv_create(kv, "p1.url.a", b"claimer-1")
    assert first >= 1
    with pytest.raises(KeyWrongLastSequenceError):
        await kv_create(kv, "p1.url.a", b"claimer-2")
    assert (await kv.get("p1.url.a")).value == b"claimer-1"
    await kv.delete("p1.url.a")
    assert await kv_create(kv, "p1.url.a", b"claimer-3") > first
    assert (await kv.get("p1.url.a")).value == b"claimer-3"


@contextlib.contextmanager
def lagging(kv: KeyValue, misses: int) -> Iterator[list[str]]:
    """Within it, the bucket's own read (the one create makes after a refusal) finds nothing
    `misses` times, as a replica behind the stream's leader does; yields the reads missed."""
    read = kv._get
    missed: list[str] = []

    async def behind(key: str, *args: Any, **kwargs: Any) -> Any:
        if len(missed) < misses:
            missed.append(key)
            raise KeyNotFoundError
        return await read(key, *args, **kwargs)

    kv._get = behind  # type: ignore[method-assign]
    try:
        yield missed
    finally:
        kv._get = read  # type: ignore[method-assign]


async def test_an_existing_key_read_from_a_lagging_replica_is_still_refused(bus: Bus) -> None:
    kv = await bus.buckets.get(Bucket.CRAWLS)
    await kv.create("p2.url.a", b"claimer-1")
    # nats-py's own create lets the lagging read's KeyNotFoundError out, which a caller
    # waiting for "exists" (KeyWrongLastSequenceError) takes for a failure.
    with lagging(kv, misses=1), pytest.raises(KeyNotFoundError):
        await kv.create("p2.url.a", b"claimer-2")
    # Asked again once the replica caught up: the refusal it is.
    with lagging(kv, misses=1) as missed, pytest.raises(KeyWrongLastSequenceError):
        await kv_create(kv, "p2.url.a", b"claimer-2")
    assert missed == ["p2.url.a"]
    # A replica that never catches up: still "exists", as the refusal said.
    with lagging(kv, misses=10) as missed, pytest.raises(KeyWrongLastSequenceError):
        await kv_create(kv, "p2.url.a", b"claimer-2")
    assert len(missed) == 3
    assert (await kv.get("p2.url.a")).value == b"claimer-1"
