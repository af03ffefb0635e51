"""The watchdog: tasks whose record says `running` but whose work nobody is doing any more.

A worker's events name its process (`TaskEvent.replica`, the id its heartbeat is stored
under in `replicas`), so a record tells which process runs its task. A record is a suspect
when it has not changed for `grace_s` and either that process no longer beats (killed,
its machine gone) or the record has not changed for longer than its kind's longest run
(`RetryPolicy.max_run_s`, after which a live worker would have reported a retry) plus
`grace_s`. A suspect is then judged by what the bus still holds:

- its own message still stored in its kind's work-queue stream: a live worker holds it
  (running, its keep-alives pushing the ack deadline back) and it is left alone; with its
  worker gone the bus will deliver it again after ack_wait, so it is re-queued (a
  `retrying` event, the attempt unchanged: the next delivery's start moves it on);
- the message of its next step stored (a scraped page handed to the embedder, which
  reports on the page): the work goes on there, left alone;
- neither: nothing will ever finish it. It is failed ("no live worker for N s; settled by
  the watchdog"), which the tracker applies like any outcome, so a parent counts it.

Both settlements are events, not writes: records change only through the tracker, and a
real outcome, emitted before its message was acknowledged, is ahead of the watchdog's in
the events stream (terminal is final). Parents (crawls, batches) are never suspects: their
record runs while their children do, and `reconcile` looks after them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.js.errors import NotFoundError

from helpline.common import metrics, subjects
from helpline.common.bus import Bus
from helpline.common.crawlstate import CrawlLedger
from helpline.common.kv import Replicas
from helpline.common.messages import EventType, TaskError, TaskEvent, derived_id
from helpline.common.records import Status, TaskRecord
from helpline.common.retrypolicy import DEFAULT_MAX_RUN_S, FALLBACK_MAX_RUN_S
from helpline.common.subjects import Kind
from helpline.common.taskstore import TaskStore

log = logging.getLogger(__name__)

#: How long a record may go unchanged before it is looked at, and the margin past a kind's
#: longest run (events in flight, a tracker behind, clocks apart).
GRACE_S = 60.0
#: A replica whose last heartbeat (every 5 s) is older than this is taken for dead; the
#: `replicas` bucket forgets it after 30 s anyway.
LIVE_WITHIN_S = 15.0

#: The message a task's work goes on as once its handler handed it over (`REPORTED_LATER`).
HAND_OFFS: dict[Kind, tuple[tuple[Kind, Callable[[str], str]], ...]] = {
    Kind.SCRAPE: ((Kind.EMBED, lambda task_id: derived_id(task_id, "embed")),),
}
_RUNNING = b'"status":"running"'


@dataclass(frozen=True)
class Suspect:
    record: TaskRecord
    quiet_s: float  # since the record last changed
    worker_gone: bool


async def live_replicas(bus: Bus, *, within_s: float, now: float) -> set[str]:
    """The replicas whose heartbeat is recent."""
    live = set()
    for report in await Replicas(bus.buckets).all():
        try:
            at = _timestamp(str(report["at"]))
        except (KeyError, ValueError):
            continue
        if now - at <= within_s:
            live.add(str(report.get("replica")))
    return live


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _last_change(record: TaskRecord) -> float:
    at = record.updated_at or record.started_at or record.created_at
    return at.timestamp()


async def stored_task_ids(bus: Bus, kind: Kind) -> set[str]:
    """The ids (`Nats-Msg-Id`) of every message stored in a kind's work-queue stream: sent
    and not yet acknowledged (a work queue drops a message once it is). Read a message at
    a time with the stream API: a work queue takes no second consumer."""
    stream = bus.layout.task_stream(kind)
    wildcard = subjects.tasks_wildcard(kind, bus.layout.prefix)
    state = (await bus.js.stream_info(stream)).state
    ids: set[str] = set()
    seq, left = state.first_seq or 1, state.messages or 0
    while left > 0:
        try:
            msg = await bus.js.get_msg(stream, seq=seq, subject=wildcard, next=True)
        except NotFoundError:
            break  # acknowledged meanwhile: none after `seq`
        left -= 1
        if msg.headers and msg.headers.get("Nats-Msg-Id"):
            ids.add(msg.headers["Nats-Msg-Id"])
        seq = (msg.seq or seq) + 1
    return ids


async def watch(
    bus: Bus,
    now: float,
    *,
    max_run_s: Mapping[str, float] = DEFAULT_MAX_RUN_S,
    grace_s: float = GRACE_S,
    live_within_s: float = LIVE_WITHIN_S,
) -> dict[str, Any]:
    """Look at every running record once; settle those nobody works on. Returns what was
    looked at and what was done, by task id."""
    parents = set(await CrawlLedger(bus.buckets).open_parents())
    live = await live_replicas(bus, within_s=live_within_s, now=time.time())
    suspects = []
    running = await TaskStore(bus).scan(match=lambda raw: _RUNNING in raw)
    for record in running:
        if record.status is not Status.RUNNING or _is_parent(record, parents):
            continue
        quiet_s = now - _last_change(record)
        if quiet_s < grace_s:
            continue
        gone = record.replica is not None and record.replica not in live
        overdue = quiet_s > max_run_s.get(record.kind, FALLBACK_MAX_RUN_S) + grace_s
        if gone or overdue:
            suspects.append(Suspect(record, quiet_s, gone))
    requeued: list[str] = []
    failed: list[str] = []
    if suspects:
        kinds = {s.record.kind for s in suspects}
        kinds |= {k for kind in kinds for k, _ in HAND_OFFS.get(kind, ())}
        stored = {kind: await stored_task_ids(bus, kind) for kind in kinds}
        for suspect in suspects:
            record = suspect.record
            if any(to(record.task_id) in stored[k] for k, to in HAND_OFFS.get(record.kind, ())):
                continue  # its next step waits on the bus, and will report
            if record.task_id in stored[record.kind]:
                if not suspect.worker_gone:
                    continue  # a live worker holds its message: running
                await _settle(bus, suspect, requeue=True)
                requeued.append(record.task_id)
            else:
                await _settle(bus, suspect, requeue=False)
                failed.append(record.task_id)
    return {
        "running": len(running),
        "suspects": len(suspects),
        "requeued": requeued,
        "failed": failed,
    }


def _is_parent(record: TaskRecord, open_parents: set[str]) -> bool:
    return (
        record.kind is Kind.CRAWL or record.progress is not None or record.task_id in open_parents
    )


async def _settle(bus: Bus, suspect: Suspect, *, requeue: bool) -> None:
    record = suspect.record
    quiet = f"{suspect.quiet_s:.0f}"
    if requeue:
        message = (
            f"no live worker for {quiet} s; its message will be delivered again; "
            "settled by the watchdog"
        )
    else:
        message = f"no live worker for {quiet} s; settled by the watchdog"
    await bus.emit(
        TaskEvent(
            task_id=record.task_id,
            kind=record.kind,
            type=EventType.RETRYING if requeue else EventType.FAILED,
            attempt=record.attempts,
            priority=record.priority,
            parent_id=record.parent_id,
            error=TaskError(type="WorkerLost", message=message),
            trace_id=record.trace_id,
        )
    )
    outcome = "requeued" if requeue else "failed"
    if metrics.enabled():
        metrics.WATCHDOG_SETTLED.labels(record.kind, outcome).inc()
    log.warning(
        "watchdog: task %s (%s) %s: %s (last worker %s)",
        record.task_id,
        record.kind,
        outcome,
        message,
        record.replica or "unknown",
    )
