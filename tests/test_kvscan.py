"""Reading a KV bucket whole (kvscan.py) against a real nats-server: every stored entry, the
deleted ones left out, however many pages, straight after the writes."""

from __future__ import annotations

import asyncio

from e2e_helpers import eventually
from nats.js.kv import KeyValue

from helpline.cli.natsserver import NatsServer
from helpline.common.answercache import Generations, bump_generation, generation_key
from helpline.common.bus import Bus
from helpline.common.crawlstate import CrawlLedger
from helpline.common.kvscan import kv_entries
from helpline.common.subjects import Bucket


async def listed(kv: KeyValue, pattern: str = ">", **kwargs: object) -> dict[str, bytes]:
    return {e.key: e.value async for e in kv_entries(kv, pattern, **kwargs)}  # type: ignore[arg-type]


async def test_every_entry_under_the_pattern_and_no_deleted_one(bus: Bus) -> None:
    kv = await bus.buckets.get(Bucket.CRAWLS)
    assert await listed(kv) == {}
    for i in range(20):
        await kv.put(f"p1.done.c{i}", str(i).encode())
    await kv.put("p2.done.c0", b"other parent")
    await kv.put("p1.done.c3", b"rewritten")
    await kv.delete("p1.done.c4")
    await kv.purge("p1.done.c5")
    expected = {f"p1.done.c{i}": str(i).encode() for i in range(20) if i not in (3, 4, 5)}
    expected["p1.done.c3"] = b"rewritten"
    # Several pages of 7, and one request for all.
    assert await listed(kv, "p1.done.*", page=7) == expected
    assert await listed(kv, "p1.done.*") == expected
    assert set(await listed(kv)) == {*expected, "p2.done.c0"}
    revisions = {e.key: e.revision async for e in kv_entries(kv, "p1.done.c3")}
    assert revisions == {"p1.done.c3": (await kv.get("p1.done.c3")).revision}


async def test_a_listing_read_straight_after_the_writes_is_never_short(bus: Bus) -> None:
    """nats-py's watch could end such a listing before entries already in flight: with
    it, about 1 in 20 of these tallies came back short; every one must come back whole."""
    crawls = CrawlLedger(bus.buckets)
    short = []
    for parent in range(30):
        await asyncio.gather(
            *(
                crawls.mark_finished(f"p{parent}", f"c{c}", ok=c % 4 > 0, chunks=2)
                for c in range(200)
            )
        )
        for _ in range(5):
            counted = await crawls.tally(f"p{parent}")
            if (counted.done, counted.ok, counted.failed, counted.chunks) != (200, 150, 50, 400):
                short.append((parent, counted))
    assert short == []


async def test_keys_deleted_or_rewritten_during_the_listing(bus: Bus) -> None:
    kv = await bus.buckets.get(Bucket.CRAWLS)
    bucket = bus.layout.bucket(Bucket.CRAWLS)
    stream = f"KV_{bucket}"
    for i in range(20):
        await kv.put(f"k{i:02}", b"old")
    seen: list[tuple[str, bytes]] = []
    async for entry in kv_entries(kv, page=5):
        if not seen:  # while the listing is under way
            for i in range(10, 15):
                await kv.delete(f"k{i:02}")
            for i in range(15, 20):  # gone from the stream, no delete marker left
                await bus.js.purge_stream(stream, subject=f"$KV.{bucket}.k{i:02}")
            await kv.put("k05", b"new")
        seen.append((entry.key, entry.value))
    # The deleted ones never come; the rewritten one comes with its new value too.
    assert [k for k, _ in seen if k != "k05"] == [f"k{i:02}" for i in range(10) if i != 5]
    assert seen.count(("k05", b"new")) == 1


async def test_the_listing_leaves_no_consumer_behind(bus: Bus) -> None:
    kv = await bus.buckets.get(Bucket.CRAWLS)
    await kv.put("a", b"1")
    for _ in range(3):
        assert await listed(kv) == {"a": b"1"}
    stream = f"KV_{bus.layout.bucket(Bucket.CRAWLS)}"

    async def none_left() -> bool:  # the delete is sent, not waited for
        return (await bus.js.stream_info(stream)).state.consumer_count == 0

    assert await eventually(none_left, timeout_s=5, every_s=0.02)


async def test_generations_are_all_known_once_started(bus: Bus) -> None:
    brands = [f"brand{i}" for i in range(30)]
    for brand in brands:
        await bump_generation(bus, brand)
    kv = await bus.buckets.get(Bucket.GENERATIONS)
    stored = {b: (await kv.get(generation_key(b))).revision for b in brands}
    for _ in range(20):  # a fresh reader each time: none may start with a brand missing
        generations = Generations()
        await generations.start(bus)
        try:
            assert {b: generations.current(b) for b in brands} == stored
        finally:
            await generations.stop()


async def test_a_starting_process_knows_every_earlier_cancellation(
    bus: Bus, nats_server: NatsServer
) -> None:
    ids = [f"task{i}" for i in range(300)]
    await bus.cancellations.cancel(ids)
    for _ in range(5):  # a fresh process each time, as `Host.start` does it
        starting = Bus(bus.layout)
        await starting.connect(nats_server.url, name="starting")
        try:
            await starting.cancellations.follow()
            # At once, before its first task: not when the watch gets round to it.
            assert starting.cancellations.any(*ids[-3:])
            assert starting.cancellations.ids >= set(ids)
        finally:
            await starting.close()
