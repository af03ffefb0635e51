"""The bus layout of one deployment (or one test), and declaring it on the server.

Names come from `subjects`; this module adds the limits (storage, replicas, ack wait,
TTLs) and creates what is missing: a work-queue stream per kind with a durable pull
consumer per priority, the events stream with the tracker's consumer, the dead-letter
stream, and every bucket of `subjects.Bucket`. Declaring is safe from every replica.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js import api
from nats.js.errors import BadRequestError, NotFoundError

from helpline.common import subjects
from helpline.common.subjects import Bucket, Kind, Priority

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from helpline.common.settings import HelplineSettings

log = logging.getLogger(__name__)

HOSTS_TTL_S = 24 * 3600.0
REPLICA_TTL_S = 30.0
DUPLICATE_WINDOW_S = 120.0
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
DLQ_MAX_AGE_S = 30 * 24 * 3600.0
#: The request log keeps a day, and at most this many requests (the oldest go first).
REQUEST_LOG_MAX_AGE_S = 24 * 3600.0
REQUEST_LOG_MAX_MSGS = 200_000
REQUEST_LOG_MAX_BYTES = 64 * 1024 * 1024
#: The trace store (`spanstore`) keeps a day of recent traces, at most this many bytes.
TRACES_MAX_AGE_S = 24 * 3600.0
TRACES_MAX_BYTES = 128 * 1024 * 1024


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

    def bucket_config(self, name: Bucket) -> api.KeyValueConfig:
        """A bucket's TTL, history and read path."""
        ttl = {
            Bucket.TASKS: self.task_record_ttl_s,
            Bucket.CRAWLS: self.task_record_ttl_s,
            Bucket.DEFERRALS: self.task_record_ttl_s,
            Bucket.CANCELS: self.task_record_ttl_s,
            Bucket.REPLICAS: REPLICA_TTL_S,
            Bucket.PAGES: 0.0,
            Bucket.TEXTS: 0.0,
            Bucket.HOSTS: HOSTS_TTL_S,
            Bucket.ANSWERS: self.answer_cache_ttl_s,
            # Generations never expire: a lost one would make stale answers current again.
            Bucket.GENERATIONS: 0.0,
            # Keys last until revoked.
            Bucket.KEYS: 0.0,
            # One entry per key (its limit's state and when it was last used), deleted with
            # the key.
            Bucket.RATES: 0.0,
            # Sources last until deleted; a lease's expiry is in its value (`leases`).
            Bucket.SOURCES: 0.0,
            Bucket.LEASES: 0.0,
            # Webhooks last until deleted; their deliveries as long as task records.
            Bucket.WEBHOOKS: 0.0,
            Bucket.DELIVERIES: self.task_record_ttl_s,
        }[name]
        return api.KeyValueConfig(
            bucket=self.bucket(name),
            ttl=ttl,
            history=1,
            storage=self.storage,
            replicas=self.replicas,
            # Read on every change (compare-and-swap) or every query: direct gets, answered
            # by any replica without the JetStream API, take half the time.
            direct=name in _DIRECT,
        )


_DIRECT = frozenset({Bucket.TASKS, Bucket.CRAWLS, Bucket.ANSWERS, Bucket.RATES})


async def declare(js: JetStreamContext, layout: BusLayout) -> dict[Bucket, KeyValue]:
    """Create streams, consumers and buckets if missing; the buckets, bound."""
    for kind in Kind:
        await _ensure_stream(
            js,
            api.StreamConfig(
                name=layout.task_stream(kind),
                subjects=[subjects.tasks_wildcard(kind, layout.prefix)],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=layout.storage,
                discard=api.DiscardPolicy.NEW,
                max_msgs=layout.stream_max_msgs,
                duplicate_window=DUPLICATE_WINDOW_S,
                num_replicas=layout.replicas,
            ),
        )
        for priority in Priority:
            await _ensure_consumer(
                js, layout.task_stream(kind), layout.consumer_config(kind, priority)
            )
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=subjects.events_stream(layout.prefix),
            subjects=[subjects.events_wildcard(layout.prefix)],
            retention=api.RetentionPolicy.LIMITS,
            storage=layout.storage,
            max_age=EVENTS_MAX_AGE_S,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=layout.replicas,
        ),
    )
    await _ensure_consumer(js, subjects.events_stream(layout.prefix), layout.tracker_config())
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=subjects.dlq_stream(layout.prefix),
            subjects=[subjects.dlq_wildcard(layout.prefix)],
            retention=api.RetentionPolicy.LIMITS,
            storage=layout.storage,
            max_age=DLQ_MAX_AGE_S,
            num_replicas=layout.replicas,
        ),
    )
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=subjects.requests_stream(layout.prefix),
            subjects=[subjects.requests(layout.prefix)],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            storage=layout.storage,
            max_age=REQUEST_LOG_MAX_AGE_S,
            max_msgs=REQUEST_LOG_MAX_MSGS,
            max_bytes=REQUEST_LOG_MAX_BYTES,
            num_replicas=layout.replicas,
        ),
    )
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=subjects.traces_stream(layout.prefix),
            subjects=[subjects.traces_wildcard(layout.prefix)],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            storage=layout.storage,
            max_age=TRACES_MAX_AGE_S,
            max_bytes=TRACES_MAX_BYTES,
            num_replicas=layout.replicas,
        ),
    )
    return {name: await _ensure_bucket(js, layout.bucket_config(name)) for name in Bucket}


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError:
            # another replica created it between the two calls
            await js.stream_info(config.name or "")
        return
    await js.update_stream(config)


async def _ensure_consumer(js: JetStreamContext, stream: str, config: api.ConsumerConfig) -> None:
    # Create, or update the editable fields (ack_wait, max_deliver, ...) of an existing one.
    try:
        await js.add_consumer(stream, config)
    except BadRequestError as exc:
        log.warning("consumer %s on %s kept as it is: %s", config.durable_name, stream, exc)


async def _ensure_bucket(js: JetStreamContext, config: api.KeyValueConfig) -> KeyValue:
    name = config.bucket or ""
    try:
        kv = await js.key_value(name)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(config)
    if config.direct and not kv._direct:  # a bucket made before it allowed direct gets
        info = await js.stream_info(f"KV_{name}")
        info.config.allow_direct = True
        await js.update_stream(info.config)
        kv = await js.key_value(name)
    return kv
