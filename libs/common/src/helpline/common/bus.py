"""The bus: connecting, declaring streams/consumers/buckets, submitting tasks and emitting events.

The connection is a FastStream `NatsBroker` carrying the OpenTelemetry middleware. Tasks
and events, the hot path, are published by `Bus.publish`: straight to JetStream with
pipelined acknowledgements (`Acks`), in a producer span whose W3C context rides in the
message's headers, as the middleware does; FastStream's publish path costs about three
times as much per message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import (
    APIError,
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)
from opentelemetry import propagate, trace
from pydantic import BaseModel

from helpline.common import subjects
from helpline.common.breaker import BreakerBoard
from helpline.common.errors import Overloaded
from helpline.common.kvscan import kv_entries
from helpline.common.messages import TaskEvent, TaskMessage
from helpline.common.observability import span
from helpline.common.records import TERMINAL_STATUSES
from helpline.common.subjects import Bucket, Kind, Priority
from helpline.common.urgency import Urgency

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from helpline.common.settings import HelplineSettings

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("helpline.bus")

HOSTS_TTL_S = 24 * 3600.0
REPLICA_TTL_S = 30.0
DUPLICATE_WINDOW_S = 120.0
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0


PUBLISH_TIMEOUT_S = 5.0
# JetStream's "wrong last sequence" error codes: the compare in compare-and-swap failed.
WRONG_LAST_SEQUENCE = (10071, 10164)


@dataclass(frozen=True)
class BusLayout:
    """The names and limits one deployment (or one test) uses."""

    prefix: str = subjects.PREFIX
    file_storage: bool = True
    replicas: int = 1
    stream_max_msgs: int = 1_000_000
    ack_wait_s: float = 60.0
    max_deliver: int = 4
    max_ack_pending: int = 1_000
    bulk_concurrency: int = 2
    bulk_yield_window_s: float = 1.0
    bulk_yield_starts_per_s: float = 5.0
    task_record_ttl_s: float = 7 * 24 * 3600.0
    answer_cache_ttl_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: HelplineSettings) -> BusLayout:
        """The layout the settings describe."""
        return cls(
            prefix=settings.bus_prefix,
            file_storage=settings.file_storage,
            replicas=settings.stream_replicas,
            bulk_concurrency=settings.bulk_concurrency,
            bulk_yield_window_s=settings.bulk_yield_window_s,
            bulk_yield_starts_per_s=settings.bulk_yield_starts_per_s,
            stream_max_msgs=settings.stream_max_msgs,
            ack_wait_s=settings.ack_wait_s,
            max_deliver=settings.max_deliver,
            task_record_ttl_s=settings.task_record_ttl_s,
            answer_cache_ttl_s=settings.answer_cache_ttl_s,
        )

    @property
    def storage(self) -> api.StorageType:
        return api.StorageType.FILE if self.file_storage else api.StorageType.MEMORY

    def task_subject(self, kind: Kind, priority: Priority) -> str:
        return subjects.task(kind, priority, self.prefix)

    def task_stream(self, kind: Kind) -> str:
        return subjects.stream(kind, self.prefix)

    def event_subject(self, kind: Kind) -> str:
        return subjects.event(kind, self.prefix)

    def bucket(self, name: str) -> str:
        return subjects.bucket(name, self.prefix)

    def consumer_config(self, kind: Kind, priority: Priority) -> api.ConsumerConfig:
        """The durable pull consumer every replica working this kind and priority shares."""
        return api.ConsumerConfig(
            durable_name=subjects.consumer(kind, priority),
            filter_subject=self.task_subject(kind, priority),
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            # Unlimited: the worker counts attempts itself (deliveries that waited on an open
            # breaker are not attempts) and dead-letters the last one, so the server never
            # silently parks a message that reached a limit.
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending,
        )

    def tracker_config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            durable_name=subjects.TRACKER_CONSUMER,
            filter_subject=subjects.events_wildcard(self.prefix),
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            # Applying an event takes milliseconds: one a stopped or cut-off gateway held is
            # back within seconds, not half a minute.
            ack_wait=5.0,
            max_ack_pending=self.max_ack_pending,
        )


def make_broker(url: str, *, name: str, graceful_timeout: float = 30.0) -> NatsBroker:
    """A broker with the tracing middleware; stopping waits `graceful_timeout` for handlers."""
    logger = logging.getLogger(f"helpline.bus.{name}")
    # FastStream logs every message and supervisor callback at INFO: far too chatty.
    logger.setLevel(logging.WARNING)
    return NatsBroker(
        url,
        name=name,
        middlewares=[NatsTelemetryMiddleware()],
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        logger=logger,
        graceful_timeout=graceful_timeout,
    )


def api_error(err: dict[str, Any]) -> APIError:
    """The exception for a JetStream API error (nats-py's own helper raises it instead)."""
    if err.get("err_code") in WRONG_LAST_SEQUENCE:
        return KeyWrongLastSequenceError(description=err.get("description"))
    classes: dict[int, type[APIError]] = {
        400: BadRequestError,
        404: NotFoundError,
        500: ServerError,
        503: ServiceUnavailableError,
    }
    known = {k: err.get(k) for k in ("code", "err_code", "description", "stream", "seq")}
    return classes.get(int(err.get("code") or 0), APIError)(**known)


class Acks:
    """Publishing to JetStream with many acknowledgements awaited at once, on one inbox.

    nats-py's `publish_async` would do, but its reply handler raises a stream's error
    (a full stream, a failed compare-and-swap) instead of handing it to the waiting
    publisher, who then waits until the timeout.

    Every publish shares one timeout, so the acknowledgements awaited are also in deadline
    order: one timer, armed while any is awaited, fails the overdue ones with
    `TimeoutError`, instead of a timer and a waiter per publish (`asyncio.wait_for`).
    """

    def __init__(self, nc: Client, *, timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._prefix = f"_INBOX.{uuid.uuid4().hex}."
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._deadlines: deque[tuple[float, str]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0
        self._sub: Subscription | None = None

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """Publish and wait for the stream's acknowledgement; the message's sequence."""
        if self._sub is None:
            self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        ack: asyncio.Future[int] = loop.create_future()
        self._waiting[token] = ack
        while self._deadlines and self._deadlines[0][1] not in self._waiting:
            self._deadlines.popleft()  # answered already: keep the queue as short as the wait
        self._deadlines.append((loop.time() + self._timeout_s, token))
        if self._timer is None:
            self._timer = loop.call_at(self._deadlines[0][0], self._expire, loop)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            return await ack
        finally:
            self._waiting.pop(token, None)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the acknowledgements awaited past their deadline; re-arm for the next."""
        self._timer = None
        now = loop.time()
        while self._deadlines:
            deadline, token = self._deadlines[0]
            ack = self._waiting.get(token)
            if ack is not None and deadline > now:
                self._timer = loop.call_at(deadline, self._expire, loop)
                return
            self._deadlines.popleft()
            if ack is not None and not ack.done():
                ack.set_exception(TimeoutError("no acknowledgement from the stream in time"))

    async def _on_ack(self, msg: Msg) -> None:
        ack = self._waiting.get(msg.subject[len(self._prefix) :])
        if ack is None or ack.done():
            return
        if msg.headers and msg.headers.get(api.Header.STATUS) == api.StatusCode.SERVICE_UNAVAILABLE:
            ack.set_exception(NoStreamResponseError())
            return
        try:
            response = json.loads(msg.data)
        except ValueError as exc:
            ack.set_exception(exc)
            return
        if "error" in response:
            ack.set_exception(api_error(response["error"]))
        else:
            ack.set_result(int(response.get("seq", 0)))


class Publish(Protocol):
    """Put a message on a stream and wait for its acknowledgement."""

    async def __call__(
        self, subject: str, payload: bytes, *, stream: str, headers: dict[str, str]
    ) -> None: ...


class Bus:
    """One process's handle on the bus: declares the layout, submits tasks, emits events.

    `publish` replaces JetStream for unit tests of one handler (nothing to connect to).
    """

    def __init__(
        self, broker: NatsBroker, layout: BusLayout, *, publish: Publish | None = None
    ) -> None:
        self.broker = broker
        self.layout = layout
        self._publish = publish or self._publish_to_jetstream
        self._acks: Acks | None = None
        self.breakers = BreakerBoard()
        # Shared by this process's task pools: batch work yields to urgent work.
        self.urgency = Urgency(layout.bulk_yield_window_s, layout.bulk_yield_starts_per_s)
        self.cancelled: set[str] = set()
        self._kv: dict[str, KeyValue] = {}
        self._cancel_watch: asyncio.Task[None] | None = None

    @property
    def nc(self) -> Client:
        conn: Client | None = self.broker.config.connection_state.connection
        assert conn is not None, "broker is not connected"
        return conn

    @property
    def js(self) -> JetStreamContext:
        return self.broker.config.connection_state.stream  # type: ignore[no-any-return]

    async def bootstrap(self) -> None:
        """Create streams, consumers and buckets if missing; safe to run from every replica."""
        lay = self.layout
        for kind in Kind:
            await self._ensure_stream(
                api.StreamConfig(
                    name=lay.task_stream(kind),
                    subjects=[subjects.tasks_wildcard(kind, lay.prefix)],
                    retention=api.RetentionPolicy.WORK_QUEUE,
                    storage=lay.storage,
                    discard=api.DiscardPolicy.NEW,
                    max_msgs=lay.stream_max_msgs,
                    duplicate_window=DUPLICATE_WINDOW_S,
                    num_replicas=lay.replicas,
                )
            )
            for priority in Priority:
                await self._ensure_consumer(
                    lay.task_stream(kind), lay.consumer_config(kind, priority)
                )
        await self._ensure_stream(
            api.StreamConfig(
                name=subjects.events_stream(lay.prefix),
                subjects=[subjects.events_wildcard(lay.prefix)],
                retention=api.RetentionPolicy.LIMITS,
                storage=lay.storage,
                max_age=EVENTS_MAX_AGE_S,
                duplicate_window=DUPLICATE_WINDOW_S,
                num_replicas=lay.replicas,
            )
        )
        await self._ensure_consumer(subjects.events_stream(lay.prefix), lay.tracker_config())
        await self._ensure_stream(
            api.StreamConfig(
                name=subjects.dlq_stream(lay.prefix),
                subjects=[subjects.dlq_wildcard(lay.prefix)],
                retention=api.RetentionPolicy.LIMITS,
                storage=lay.storage,
                max_age=30 * 24 * 3600.0,
                num_replicas=lay.replicas,
            )
        )
        # Records and crawl counts are read on every change (compare-and-swap): direct gets,
        # answered without the JetStream API, take half the time.
        await self._ensure_bucket(Bucket.TASKS, ttl=lay.task_record_ttl_s, history=1, direct=True)
        await self._ensure_bucket(Bucket.CRAWLS, ttl=lay.task_record_ttl_s, history=1, direct=True)
        await self._ensure_bucket(Bucket.DEFERRALS, ttl=lay.task_record_ttl_s, history=1)
        await self._ensure_bucket(Bucket.CANCELS, ttl=lay.task_record_ttl_s, history=1)
        await self._ensure_bucket(Bucket.REPLICAS, ttl=REPLICA_TTL_S, history=1)
        await self._ensure_bucket(Bucket.PAGES, ttl=0, history=1)
        await self._ensure_bucket(Bucket.HOSTS, ttl=HOSTS_TTL_S, history=1)
        # Direct gets: read by every query, answered by any replica without the JetStream API.
        await self._ensure_bucket(
            Bucket.ANSWERS, ttl=lay.answer_cache_ttl_s, history=1, direct=True
        )
        # Generations never expire: a lost one would make stale answers current again.
        await self._ensure_bucket(Bucket.GENERATIONS, ttl=0.0, history=1)

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        try:
            await self.js.stream_info(config.name or "")
        except NotFoundError:
            try:
                await self.js.add_stream(config)
            except BadRequestError:
                # another replica created it between the two calls
                await self.js.stream_info(config.name or "")
            return
        await self.js.update_stream(config)

    async def _ensure_consumer(self, stream: str, config: api.ConsumerConfig) -> None:
        # Create, or update the editable fields (ack_wait, max_deliver, ...) of an existing one.
        try:
            await self.js.add_consumer(stream, config)
        except BadRequestError as exc:
            log.warning("consumer %s on %s kept as it is: %s", config.durable_name, stream, exc)

    async def _ensure_bucket(
        self, name: str, *, ttl: float, history: int, direct: bool = False
    ) -> None:
        full = self.layout.bucket(name)
        try:
            kv = await self.js.key_value(full)
        except (NotFoundError, BadRequestError):
            kv = await self.js.create_key_value(
                api.KeyValueConfig(
                    bucket=full,
                    ttl=ttl,
                    history=history,
                    storage=self.layout.storage,
                    replicas=self.layout.replicas,
                    direct=direct,
                )
            )
        else:
            if direct and not kv._direct:  # a bucket made before it allowed direct gets
                info = await self.js.stream_info(f"KV_{full}")
                info.config.allow_direct = True
                await self.js.update_stream(info.config)
                kv = await self.js.key_value(full)
        self._kv[name] = kv

    async def kv(self, name: str) -> KeyValue:
        """A bucket (`tasks`, `crawls`), bound once per process."""
        if name not in self._kv:
            self._kv[name] = await self.js.key_value(self.layout.bucket(name))
        return self._kv[name]

    async def streams_present(self) -> bool:
        """Readiness: connected and every stream declared."""
        if not self.nc.is_connected:
            return False
        try:
            for kind in Kind:
                await self.js.stream_info(self.layout.task_stream(kind))
            await self.js.stream_info(subjects.events_stream(self.layout.prefix))
        except (APIError, TimeoutError):
            return False
        return True

    async def cancel(self, task_ids: list[str]) -> None:
        """Mark tasks cancelled for every replica (workers skip them or stop at a checkpoint)."""
        kv = await self.kv(Bucket.CANCELS)
        for task_id in task_ids:
            await kv.put(task_id, b"1")
        self.cancelled.update(task_ids)

    def is_cancelled(self, *task_ids: str | None) -> bool:
        return any(t in self.cancelled for t in task_ids if t)

    async def watch_cancellations(self) -> None:
        """Keep `cancelled` current from the cancels bucket (in memory: no read per task).
        Returns once every cancellation stored so far is known, so a process that is only
        starting does not run a task cancelled before it started."""
        kv = await self.kv(Bucket.CANCELS)
        watcher = await kv.watchall()

        async def follow() -> None:
            async for entry in watcher:
                if entry is not None and entry.key and entry.operation is None:
                    self.cancelled.add(entry.key)

        self._cancel_watch = asyncio.create_task(follow())
        # The watch delivers them too, but says "that was all" too early (kvscan.py).
        self.cancelled.update([entry.key async for entry in kv_entries(kv) if entry.value])

    async def close(self) -> None:
        if self._cancel_watch is not None:
            self._cancel_watch.cancel()
            self._cancel_watch = None

    async def deferrals(self, task_id: str) -> int:
        """How many deliveries of this task waited on an open breaker (not attempts)."""
        current = await kv_get(await self.kv(Bucket.DEFERRALS), task_id)
        return int(current[0]) if current else 0

    async def add_deferral(self, task_id: str) -> None:
        kv = await self.kv(Bucket.DEFERRALS)
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

    async def task_finished(self, task_id: str) -> bool:
        """Whether the task's record is already terminal (a redelivery then does nothing)."""
        current = await kv_get(await self.kv(Bucket.TASKS), task_id)
        if current is None:
            return False
        try:
            return json.loads(current[0]).get("status") in TERMINAL_STATUSES
        except ValueError:
            return False

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        stream: str,
        msg_id: str,
    ) -> None:
        """Publish to a stream and wait for its acknowledgement; traced like FastStream's
        publishes (a producer span, its context in the headers). Many may be in flight."""
        headers = {"Nats-Msg-Id": msg_id}
        with _producer_span(subject, headers):
            await self._publish(subject, payload, stream=stream, headers=headers)

    async def send(
        self, subject: str, message: BaseModel, headers: dict[str, str] | None = None
    ) -> None:
        """Publish a message on core NATS (no stream, no acknowledgement): a reply to a
        waiting inbox. Traced like `publish`; no FastStream codec or middleware."""
        out = dict(headers or {})
        with _producer_span(subject, out):
            await self.nc.publish(subject, message.model_dump_json().encode(), headers=out)

    async def _publish_to_jetstream(
        self, subject: str, payload: bytes, *, stream: str, headers: dict[str, str]
    ) -> None:
        headers["Nats-Expected-Stream"] = stream
        await self.acks.publish(subject, payload, headers)

    @property
    def acks(self) -> Acks:
        """This connection's publisher with pipelined acknowledgements."""
        if self._acks is None:
            self._acks = Acks(self.nc)
        return self._acks

    async def submit(self, kind: Kind, task: TaskMessage, *, msg_id: str | None = None) -> None:
        """Publish a task and wait for the stream's acknowledgement (the task id is the msg id)."""
        try:
            await self.publish(
                self.layout.task_subject(kind, task.priority),
                task.model_dump_json().encode(),
                stream=self.layout.task_stream(kind),
                msg_id=msg_id or task.task_id,
            )
        except APIError as exc:
            raise Overloaded(f"the {kind} queue is full; try again later") from exc
        except (TimeoutError, NatsError) as exc:
            raise Overloaded("the bus did not acknowledge in time; try again later") from exc

    async def emit(self, event: TaskEvent) -> None:
        """Report on a task; the gateway's tracker applies it to the task record."""
        await self.publish(
            self.layout.event_subject(event.kind),
            event.model_dump_json().encode(),
            stream=subjects.events_stream(self.layout.prefix),
            msg_id=event.event_id,
        )


@contextmanager
def _producer_span(subject: str, headers: dict[str, str]) -> Iterator[None]:
    """A publish's producer span (see `observability.span`), its context put in `headers`."""
    with span(
        _tracer,
        f"{subject} publish",
        kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
    ):
        propagate.inject(headers)
        yield


async def kv_get(kv: KeyValue, key: str) -> tuple[bytes, int] | None:
    """A key's value and revision, or None when absent or deleted."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    return entry.value, entry.revision or 0
