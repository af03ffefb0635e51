"""The bus's own machinery against a real nats-server: pulls, pipelined acknowledgements,
records by compare-and-swap, and parents counted from their ledger."""

from __future__ import annotations

import asyncio

import pytest
from e2e_helpers import eventually
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import APIError, KeyWrongLastSequenceError

from helpline.cli.natsserver import NatsServer
from helpline.common.acks import Acks
from helpline.common.bus import Bus
from helpline.common.crawlstate import CrawlLedger, Tally
from helpline.common.messages import EventType, MaintenanceTask, new_task_id
from helpline.common.pulling import Puller
from helpline.common.records import Progress, Status, TaskRecord
from helpline.common.retrypolicy import RetryPolicy
from helpline.common.runtime import Host
from helpline.common.subjects import Kind, Priority
from helpline.common.taskpool import TaskConsumer
from helpline.common.taskstore import TaskStore
from helpline.common.worker import TaskContext
from helpline.gateway.tracker import Tracker, _ParentDelta
from helpline.maintenance.app import MaintenanceComponent
from helpline.maintenance.settings import MaintenanceSettings


async def work_stream(bus: Bus, name: str, **limits: object) -> str:
    """A small work-queue stream and its durable pull consumer; returns the subject."""
    subject = f"{name}.work"
    await bus.js.add_stream(
        api.StreamConfig(
            name=name,
            subjects=[subject],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.MEMORY,
            **limits,  # type: ignore[arg-type]
        )
    )
    await bus.js.add_consumer(
        name, api.ConsumerConfig(durable_name="workers", ack_policy=api.AckPolicy.EXPLICIT)
    )
    return subject


class Inbox:
    def __init__(self) -> None:
        self.msgs: list[Msg] = []
        self.arrived = asyncio.Event()
        self.idle = 0

    def take(self, msg: Msg) -> None:
        self.msgs.append(msg)
        self.arrived.set()

    async def until(self, count: int, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.msgs) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def test_a_message_is_handed_over_while_the_request_is_still_open(
    bus: Bus, prefix: str
) -> None:
    stream = f"{prefix}_PULL1"
    subject = await work_stream(bus, stream)
    inbox = Inbox()
    puller = Puller(bus.nc, stream, "workers", inbox.take, expires_s=5.0)
    await puller.start()
    try:
        puller.want(10)
        await asyncio.sleep(0.2)
        await bus.js.publish(subject, b"one")
        # Well before the request expires (5 s) and with 9 of its 10 messages still owed.
        await inbox.until(1, timeout_s=1.0)
        assert puller.open
        await inbox.msgs[0].ack()
    finally:
        await puller.stop()


async def test_a_batch_comes_in_one_request_and_the_owner_is_asked_for_more(
    bus: Bus, prefix: str
) -> None:
    stream = f"{prefix}_PULL2"
    subject = await work_stream(bus, stream)
    for i in range(50):
        await bus.js.publish(subject, str(i).encode())
    inbox = Inbox()
    puller: Puller

    def more() -> None:
        inbox.idle += 1

    puller = Puller(bus.nc, stream, "workers", inbox.take, on_idle=more, expires_s=5.0)
    await puller.start()
    try:
        puller.want(50)
        await inbox.until(50, timeout_s=2.0)
        assert [m.data for m in inbox.msgs] == [str(i).encode() for i in range(50)]
        assert not puller.open
        assert inbox.idle == 1
        for msg in inbox.msgs:
            await msg.ack()
    finally:
        await puller.stop()


async def test_an_expired_request_is_asked_again(bus: Bus, prefix: str) -> None:
    stream = f"{prefix}_PULL3"
    subject = await work_stream(bus, stream)
    inbox = Inbox()
    puller: Puller | None = None

    def again() -> None:
        inbox.idle += 1
        assert puller is not None
        puller.want(1)

    puller = Puller(bus.nc, stream, "workers", inbox.take, on_idle=again, expires_s=0.3)
    await puller.start()
    try:
        puller.want(1)
        await asyncio.sleep(1.0)  # several requests expired, each followed by another
        assert inbox.idle >= 2
        await bus.js.publish(subject, b"late")
        await inbox.until(1, timeout_s=1.0)
    finally:
        await puller.stop()


async def test_a_refused_publish_fails_at_once_not_at_the_timeout(bus: Bus, prefix: str) -> None:
    stream = f"{prefix}_FULL"
    subject = await work_stream(bus, stream, max_msgs=1, discard=api.DiscardPolicy.NEW)
    await bus.acks.publish(subject, b"fits", {})
    async with asyncio.timeout(1.0):  # the publish timeout is 5 s
        with pytest.raises(APIError, match="maximum messages exceeded"):
            await bus.acks.publish(subject, b"does not fit", {})


async def test_an_unanswered_publish_times_out_and_answered_ones_do_not(
    bus: Bus, prefix: str
) -> None:
    """One timer serves every awaited acknowledgement: the unanswered fail with
    TimeoutError at their deadline, the answered return their sequence, nothing is kept."""
    subject = await work_stream(bus, f"{prefix}_ACKS")
    silent = f"{prefix}.silent"  # a subscriber that never answers: no "no responders"

    async def ignore(_msg: Msg) -> None:
        return None

    listener = await bus.nc.subscribe(silent, cb=ignore)
    acks = Acks(bus.nc, timeout_s=0.3)
    started = asyncio.get_running_loop().time()
    outcomes = await asyncio.gather(
        *(acks.publish(silent if i % 2 else subject, b"x", {}) for i in range(20)),
        return_exceptions=True,
    )
    waited = asyncio.get_running_loop().time() - started
    await listener.unsubscribe()
    assert sorted(o for o in outcomes if isinstance(o, int)) == list(range(1, 11))
    assert all(isinstance(o, TimeoutError) for o in outcomes[1::2])
    assert 0.25 <= waited < 2.0
    assert await acks.publish(subject, b"after", {}) == 11  # the timer re-arms
    assert not acks._waiting
    assert len(acks._deadlines) <= 1


async def test_a_failed_compare_and_swap_fails_at_once(bus: Bus) -> None:
    store = TaskStore(bus)
    await store.create(TaskRecord(task_id="cas1", kind=Kind.MAINTENANCE))
    async with asyncio.timeout(1.0):
        with pytest.raises(KeyWrongLastSequenceError):
            await store.create(TaskRecord(task_id="cas1", kind=Kind.MAINTENANCE))


async def test_a_stale_memory_of_a_record_costs_a_retry_not_a_lost_change(bus: Bus) -> None:
    one, other = TaskStore(bus), TaskStore(bus)  # two gateway replicas
    await one.create(TaskRecord(task_id="r1", kind=Kind.MAINTENANCE))
    await other.change("r1", lambda r: r and r.model_copy(update={"attempts": 1}))
    # `one` remembers revision 1; its write fails, it reads again and applies on top.
    await one.change(
        "r1",
        lambda r: r and r.model_copy(update={"status": Status.RUNNING, "priority": Priority.HIGH}),
    )
    stored = await TaskStore(bus).get("r1")
    assert stored is not None
    assert (stored.attempts, stored.status, stored.priority) == (1, Status.RUNNING, Priority.HIGH)


async def test_a_gateways_memory_of_ended_records_stays_small(bus: Bus) -> None:
    """Records of tasks under way are remembered up to `remember`; ended ones apart, only the
    last few (a soak filled a gateway's memory with tens of thousands of ended records)."""
    follower = TaskStore(bus, remember=100, remember_ended=3)
    await follower.follow()
    writer = TaskStore(bus)
    ended = [f"end{i}" for i in range(8)]
    for task_id in ["run1", "run2", *ended]:
        await writer.create(TaskRecord(task_id=task_id, kind=Kind.MAINTENANCE))
    for task_id in ["run1", "run2"]:
        await writer.change(
            task_id, lambda r: r and r.model_copy(update={"status": Status.RUNNING})
        )
    for task_id in ended:
        await writer.change(
            task_id, lambda r: r and r.model_copy(update={"status": Status.SUCCEEDED})
        )

    # The watch delivers every write: the last ended ones and those under way are known.
    async def settled() -> bool:
        return list(follower._ended) == ended[-3:]

    assert await eventually(settled, 5.0)
    assert set(follower._known) == {"run1", "run2"}
    running = follower._remembered("run1")
    assert running is not None
    assert running[0].status is Status.RUNNING
    # One forgotten is read again when it changes: nothing is lost.
    changed = await follower.change("end0", lambda r: r and r.model_copy(update={"attempts": 7}))
    assert changed is not None
    assert changed.status is Status.SUCCEEDED
    stored = await TaskStore(bus).get("end0")
    assert stored is not None
    assert stored.attempts == 7
    await follower.close()


async def test_submit_many_records_and_publishes_every_task(bus: Bus) -> None:
    store = TaskStore(bus)
    tasks = [MaintenanceTask(task_id=new_task_id(), job="ping") for _ in range(300)]
    records = await store.submit_many(Kind.MAINTENANCE, tasks)
    assert [r.task_id for r in records] == [t.task_id for t in tasks]
    reader = TaskStore(bus)
    for task in tasks[::50]:
        stored = await reader.get(task.task_id)
        assert stored is not None
        assert stored.status is Status.QUEUED
    info = await bus.js.stream_info(bus.layout.task_stream(Kind.MAINTENANCE))
    assert info.state.messages == 300


async def parent_with_children(bus: Bus, store: TaskStore, finished: int, total: int) -> str:
    parent_id = new_task_id()
    await store.create(
        TaskRecord(
            task_id=parent_id,
            kind=Kind.SCRAPE,
            status=Status.RUNNING,
            progress=Progress(done=0, total=total),
        )
    )
    crawls = CrawlLedger(bus.buckets)
    for i in range(finished):
        assert await crawls.mark_finished(parent_id, f"c{i}", ok=i > 0, chunks=2 if i else 0)
    return parent_id


async def test_a_child_is_written_to_its_parents_ledger_once(bus: Bus) -> None:
    crawls = CrawlLedger(bus.buckets)
    assert await crawls.mark_finished("p0", "c1", ok=True, chunks=3)
    assert not await crawls.mark_finished("p0", "c1", ok=True, chunks=3)
    assert await crawls.mark_finished("p0", "c2", ok=False, chunks=0)
    assert await crawls.tally("p0") == Tally(
        done=2, ok=1, failed=1, chunks=3, by_status={"succeeded": 1, "failed": 1}
    )
    assert await crawls.tally("nobody") == Tally()
    # A child's terminal status is kept with it: a parent counts its children by status.
    assert await crawls.mark_finished("p0", "c3", ok=False, chunks=0, status="cancelled")
    assert await crawls.mark_finished("p0", "c4", ok=False, chunks=0, status="expired")
    assert (await crawls.tally("p0")).by_status == {
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
        "expired": 1,
    }


async def test_a_lost_increment_is_recounted_from_the_ledger(bus: Bus) -> None:
    store = TaskStore(bus)
    tracker = Tracker(bus, store)
    parent_id = await parent_with_children(bus, store, finished=3, total=3)
    # Only two of the three finished children reached the parent's count (a crash between).
    delta = _ParentDelta()
    for i in (1, 2):
        delta.add(TaskRecord(task_id=f"c{i}", kind=Kind.SCRAPE, status=Status.SUCCEEDED))
    await tracker._add_to_parent(parent_id, delta)
    parent = await store.get(parent_id)
    assert parent is not None
    assert parent.status is Status.RUNNING
    assert parent.progress == Progress(done=2, total=3)
    assert parent.result is not None
    assert parent.result["children"] == {
        "succeeded": 2,
        "failed": 0,
        "expired": 0,
        "cancelled": 0,
        "unfinished": 1,
    }
    recounted = await tracker.recount(parent_id)
    assert recounted is not None
    assert recounted.status is Status.SUCCEEDED
    assert recounted.progress == Progress(done=3, total=3)
    assert recounted.result == {
        "pages_ok": 2,
        "pages_failed": 1,
        "chunks_indexed": 4,
        "children": {"succeeded": 2, "failed": 1, "expired": 0, "cancelled": 0, "unfinished": 0},
    }


async def test_a_count_raised_twice_does_not_finish_a_parent_early(bus: Bus) -> None:
    store = TaskStore(bus)
    tracker = Tracker(bus, store)
    parent_id = await parent_with_children(bus, store, finished=2, total=3)
    delta = _ParentDelta()
    for i in (0, 1, 1):  # the same child added twice (an update retried after it landed)
        delta.add(TaskRecord(task_id=f"c{i}", kind=Kind.SCRAPE, status=Status.FAILED))
    await tracker._add_to_parent(parent_id, delta)
    parent = await store.get(parent_id)
    assert parent is not None
    # The count said 3 of 3; the ledger has 2: corrected, still running.
    assert parent.status is Status.RUNNING
    assert parent.progress == Progress(done=2, total=3)


async def test_run_returns_the_outcome_to_the_caller(nats_server: NatsServer, prefix: str) -> None:
    settings = MaintenanceSettings(
        nats_url=nats_server.url, bus_prefix=prefix, file_storage=False, max_deliver=1
    )
    host = Host(settings, [MaintenanceComponent(settings)], name=f"test-{prefix}")
    await host.start()
    store = TaskStore(host.bus)
    try:
        ok = await store.run(Kind.MAINTENANCE, MaintenanceTask(task_id="run-ok", job="ping"))
        assert ok.type is EventType.SUCCEEDED
        assert ok.result is not None
        assert ok.result["pong"] is True
        bad = await store.run(Kind.MAINTENANCE, MaintenanceTask(task_id="run-bad", job="defrag"))
        assert bad.type is EventType.FAILED
        assert bad.error is not None
        assert "unknown maintenance job" in bad.error.message
        # The record is written as for any task (by the tracker, where a gateway runs; here
        # the queued record the submit wrote is all there is).
        record = await store.get("run-ok")
        assert record is not None
        assert record.kind is Kind.MAINTENANCE
    finally:
        await store.close()
        await host.stop()


async def test_a_page_claimed_before_a_crash_is_still_its_claimers(bus: Bus) -> None:
    crawls = CrawlLedger(bus.buckets)
    assert await crawls.claim_page("crawl", "http://site/a", 2, "page-1")
    # page-1 died before publishing /a; its redelivery finds its own claim and publishes.
    assert await crawls.claim_page("crawl", "http://site/a", 2, "page-1")
    assert not await crawls.claim_page("crawl", "http://site/a", 2, "page-2")
    assert await crawls.claim_page("crawl", "http://site/b", 2, "page-2")
    assert await crawls.pages_claimed("crawl") == 2
    # Over budget: refused, and still refused when the same page tries again.
    assert not await crawls.claim_page("crawl", "http://site/c", 2, "page-1")
    assert not await crawls.claim_page("crawl", "http://site/c", 2, "page-1")
    assert await crawls.pages_claimed("crawl") == 2


async def test_a_task_that_ends_while_its_pool_stops_settles_cleanly(bus: Bus) -> None:
    """Stopping lets a running task finish within the grace period: it ends without an
    error (its pool's pullers are already gone by then) and its message is acknowledged."""
    started = asyncio.Event()

    async def slow(_task: MaintenanceTask, _ctx: TaskContext) -> dict[str, bool]:
        started.set()
        await asyncio.sleep(0.3)
        return {"ok": True}

    pool = TaskConsumer(
        bus, Kind.MAINTENANCE, MaintenanceTask, slow, concurrency=1, policy=RetryPolicy()
    )
    await pool.start()
    await bus.submit(Kind.MAINTENANCE, MaintenanceTask(task_id=new_task_id(), job="ping"))
    async with asyncio.timeout(10):
        await started.wait()
    running = set(pool._running)
    await pool.stop(grace_s=5)
    assert len(running) == 1
    assert all(task.done() and task.exception() is None for task in running)

    async def acknowledged() -> bool:  # gone from the work queue (an ack is not awaited)
        info = await bus.js.stream_info(bus.layout.task_stream(Kind.MAINTENANCE))
        return info.state.messages == 0

    assert await eventually(acknowledged, timeout_s=5, every_s=0.02)
