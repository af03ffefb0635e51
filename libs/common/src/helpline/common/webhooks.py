"""Webhooks: subscriptions (the `webhooks` bucket), their deliveries (`deliveries`), signing.

Deliveries follow Standard Webhooks (standardwebhooks.com): a JSON body `{"type",
"timestamp", "data"}` and the headers `webhook-id` (the same on every attempt, so receivers
can deduplicate), `webhook-timestamp` (the attempt's, in seconds) and `webhook-signature`,
`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed with the base64-decoded part of
the secret after `whsec_`.

Each delivery is a `WebhookTask` (kind `webhook`, worked by maintenance) whose id is derived
from the webhook and the event, so announcing an event twice (a retried tracker batch)
submits one task. The secret stays in the bucket: the task carries the body only, and the
delivering worker reads the secret when it signs.

Events come from two places. The gateway's tracker (`Announcer.task_finished`): every task's
terminal state, a crawl's completion, a page indexed and a page removed. Every removal is an
embed task that leaves a page with no chunks and no state (a document, source or brand
deleted, a page missed by two re-crawls: its record keeps the `PageRemoval`, reason and
source), or a scrape whose page now answers 404/410 (reported by the embedder as the scrape:
no chunks and no page left under its URL). And the sources' schedule in maintenance, once a
run's crawl ended and its pages were swept (`source.refreshed`); a process that does not
follow the webhooks reads them from the bucket for each announcement (`WebhookStore.wanting`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel, Field

from helpline.common.documents import find_by_url, under
from helpline.common.kv import kv_get
from helpline.common.kvscan import kv_entries
from helpline.common.messages import (
    PageRemoval,
    RemovalReason,
    WebhookTask,
    derived_id,
    new_task_id,
    utcnow,
)
from helpline.common.records import Status, TaskRecord
from helpline.common.sources import SourceStore
from helpline.common.subjects import Bucket, Kind, Priority

if TYPE_CHECKING:
    from helpline.common.kv import Buckets
    from helpline.common.taskstore import TaskStore

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"


class WebhookEvent(StrEnum):
    """What a webhook may subscribe to (`ping` is sent only by `POST /webhooks/{id}/test`)."""

    TASK_SUCCEEDED = "task.succeeded"
    TASK_FAILED = "task.failed"
    CRAWL_COMPLETED = "crawl.completed"
    PAGE_INDEXED = "page.indexed"
    PAGE_REMOVED = "page.removed"
    SOURCE_REFRESHED = "source.refreshed"
    PING = "ping"


#: The events a webhook may list.
SUBSCRIBABLE = tuple(e for e in WebhookEvent if e is not WebhookEvent.PING)


class Webhook(BaseModel):
    """A subscription as stored, with its signing secret (never shown after creation)."""

    id: str
    url: str
    events: list[WebhookEvent]
    brand: str | None = None
    secret: str
    created_at: datetime
    updated_at: datetime

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    def wants(self, event: WebhookEvent, brand: str | None) -> bool:
        """Whether this webhook gets `event` of `brand` (a brand-limited one: its brand's only)."""
        return event in self.events and (self.brand is None or self.brand == brand)


def new_secret() -> str:
    """A fresh signing secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_webhook(url: str, events: list[WebhookEvent], brand: str | None) -> Webhook:
    now = utcnow()
    return Webhook(
        id=new_task_id(),
        url=url,
        events=list(dict.fromkeys(events)),
        brand=brand,
        secret=new_secret(),
        created_at=now,
        updated_at=now,
    )


def signature(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header's value for one attempt."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.{body}".encode()
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def envelope(event: WebhookEvent, data: dict[str, Any], at: datetime | None = None) -> str:
    """A delivery's body, as sent (and signed) on every attempt."""
    when = (at or utcnow()).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": str(event), "timestamp": when, "data": data}, default=str)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"  # refused for good (4xx, a blocked address, the webhook gone)
    DEAD_LETTERED = "dead_lettered"  # the last attempt failed: kept in the dead letters


class Delivery(BaseModel):
    """One event's delivery to one webhook, as the deliveries listing shows it."""

    id: str = Field(description="The delivery's task id.")
    webhook_id: str
    message_id: str = Field(description="Its webhook-id header, the same on every attempt.")
    event: WebhookEvent
    status: DeliveryStatus = DeliveryStatus.PENDING
    status_code: int | None = Field(default=None, description="The last attempt's HTTP status.")
    attempts: int = 0
    duration_ms: float | None = Field(default=None, description="The last attempt's.")
    next_retry_at: datetime | None = None
    error: str | None = None
    created_at: datetime
    last_attempt_at: datetime | None = None


def delivery_task(
    webhook: Webhook,
    event: WebhookEvent,
    data: dict[str, Any],
    seed: str,
    brand: str | None,
    priority: Priority = Priority.NORMAL,
) -> WebhookTask:
    """The task that delivers `event` (identified by `seed`) to `webhook`."""
    task_id = derived_id("webhook", webhook.id, str(event), seed)
    return WebhookTask(
        task_id=task_id,
        priority=priority,
        webhook_id=webhook.id,
        message_id=f"msg_{task_id}",
        event=str(event),
        body=envelope(event, data),
        brand=brand,
    )


class WebhookStore:
    """Webhooks in the `webhooks` bucket; `follow` keeps them in memory for `matching`."""

    def __init__(self, buckets: Buckets) -> None:
        self._buckets = buckets
        self._known: dict[str, Webhook] = {}
        self._watch: asyncio.Task[None] | None = None

    async def create(self, webhook: Webhook) -> Webhook:
        kv = await self._buckets.get(Bucket.WEBHOOKS)
        await kv.create(webhook.id, webhook.to_bytes())
        self._known[webhook.id] = webhook
        return webhook

    async def read(self, webhook_id: str) -> tuple[Webhook, int] | None:
        entry = await kv_get(await self._buckets.get(Bucket.WEBHOOKS), webhook_id)
        if entry is None:
            return None
        try:
            return Webhook.model_validate_json(entry[0]), entry[1]
        except ValueError:
            return None

    async def get(self, webhook_id: str) -> Webhook | None:
        found = await self.read(webhook_id)
        return found[0] if found else None

    async def all(self) -> list[Webhook]:
        """Every webhook, oldest first."""
        kv = await self._buckets.get(Bucket.WEBHOOKS)
        found: dict[str, Webhook] = {}
        async for entry in kv_entries(kv):
            with contextlib.suppress(ValueError):
                webhook = Webhook.model_validate_json(entry.value)
                found[webhook.id] = webhook
        return sorted(found.values(), key=lambda w: (w.created_at, w.id))

    async def change(self, webhook_id: str, change: Callable[[Webhook], Webhook]) -> Webhook | None:
        """Apply `change` by compare-and-swap; None if the webhook is gone."""
        kv = await self._buckets.get(Bucket.WEBHOOKS)
        while True:
            found = await self.read(webhook_id)
            if found is None:
                return None
            changed = change(found[0])
            try:
                await kv.update(webhook_id, changed.to_bytes(), last=found[1])
            except KeyWrongLastSequenceError:
                continue
            self._known[webhook_id] = changed
            return changed

    async def delete(self, webhook_id: str) -> bool:
        kv = await self._buckets.get(Bucket.WEBHOOKS)
        if await kv_get(kv, webhook_id) is None:
            return False
        try:
            await kv.delete(webhook_id)
        except KeyNotFoundError:
            return False
        self._known.pop(webhook_id, None)
        return True

    async def follow(self) -> None:
        """Keep every webhook in memory as the bucket changes (a watch)."""
        kv = await self._buckets.get(Bucket.WEBHOOKS)
        watcher = await kv.watchall()

        async def follow() -> None:
            async for entry in watcher:
                if entry is None or not entry.key:
                    continue
                if entry.operation is None and entry.value:
                    with contextlib.suppress(ValueError):
                        self._known[entry.key] = Webhook.model_validate_json(entry.value)
                else:
                    self._known.pop(entry.key, None)

        self._watch = asyncio.create_task(follow())
        for webhook in await self.all():
            self._known[webhook.id] = webhook

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()  # not awaited: stopping never waits on the bus
            self._watch = None

    async def current(self, webhook_id: str) -> Webhook | None:
        """The webhook as followed, or read from the bucket if not followed (yet)."""
        return self._known.get(webhook_id) or await self.get(webhook_id)

    async def wanting(self, event: WebhookEvent, brand: str | None) -> list[Webhook]:
        """`matching` where followed; elsewhere (maintenance) read from the bucket."""
        if self._watch is not None:
            return self.matching(event, brand)
        return [w for w in await self.all() if w.wants(event, brand)]

    def any(self) -> bool:
        """Whether any webhook is followed (most deployments have none: nothing to do)."""
        return bool(self._known)

    def matching(self, event: WebhookEvent, brand: str | None) -> list[Webhook]:
        """The followed webhooks that get `event` of `brand` (a dict walk, no bus)."""
        return [w for w in self._known.values() if w.wants(event, brand)]


class DeliveryLog:
    """Recent deliveries per webhook in the `deliveries` bucket (`<webhook>.<delivery>`)."""

    def __init__(self, buckets: Buckets) -> None:
        self._buckets = buckets

    async def put(self, delivery: Delivery) -> None:
        kv = await self._buckets.get(Bucket.DELIVERIES)
        await kv.put(f"{delivery.webhook_id}.{delivery.id}", delivery.model_dump_json().encode())

    async def begin(self, delivery: Delivery) -> None:
        """List a new delivery as pending; one listed already (announced again) is kept."""
        kv = await self._buckets.get(Bucket.DELIVERIES)
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.create(
                f"{delivery.webhook_id}.{delivery.id}", delivery.model_dump_json().encode()
            )

    async def get(self, webhook_id: str, delivery_id: str) -> Delivery | None:
        entry = await kv_get(
            await self._buckets.get(Bucket.DELIVERIES), f"{webhook_id}.{delivery_id}"
        )
        return Delivery.model_validate_json(entry[0]) if entry else None

    async def recent(self, webhook_id: str, limit: int = 50) -> list[Delivery]:
        """A webhook's deliveries, newest first."""
        kv = await self._buckets.get(Bucket.DELIVERIES)
        found: dict[str, Delivery] = {}
        async for entry in kv_entries(kv, f"{webhook_id}.*"):
            with contextlib.suppress(ValueError):
                delivery = Delivery.model_validate_json(entry.value)
                found[delivery.id] = delivery
        ordered = sorted(found.values(), key=lambda d: (d.created_at, d.id), reverse=True)
        return ordered[:limit]


_PAGE_COUNTS = ("chunks_indexed", "embedded", "new", "changed", "removed")
_CRAWL_COUNTS = ("pages_ok", "pages_failed", "chunks_indexed")


def _data(
    event: WebhookEvent, record: TaskRecord, removal: PageRemoval | None = None
) -> dict[str, Any]:
    """What an event of a finished task says (its body's `data`)."""
    view = record.view().model_dump(mode="json")
    result = record.result or {}
    if event is WebhookEvent.PAGE_REMOVED and removal is not None:
        return {
            "url": removal.url,
            "brand": removal.brand,
            "source_id": removal.source_id,
            "reason": str(removal.reason),
            "task_id": record.task_id,
            "chunks_removed": result.get("removed", 0),
        }
    if event is WebhookEvent.CRAWL_COMPLETED:
        return {
            "task_id": record.task_id,
            "brand": record.brand,
            "status": str(record.status),
            **{k: result.get(k, 0) for k in _CRAWL_COUNTS},
            "finished_at": view["finished_at"],
        }
    if event is WebhookEvent.PAGE_INDEXED:
        return {
            "url": result["url"],
            "brand": record.brand,
            "task_id": record.task_id,
            **{k: result[k] for k in _PAGE_COUNTS if k in result},
        }
    return view


class Announcer:
    """Submits an event's deliveries to the webhooks that want it (the gateway's tracker and
    the test route); idempotent per webhook and `seed`."""

    def __init__(self, webhooks: WebhookStore, tasks: TaskStore, deliveries: DeliveryLog):
        self.webhooks = webhooks
        self.tasks = tasks
        self.deliveries = deliveries

    async def announce(
        self,
        event: WebhookEvent,
        data: dict[str, Any],
        *,
        brand: str | None,
        seed: str,
        to: list[Webhook] | None = None,
    ) -> list[str]:
        """Submit `event` to every webhook that wants it (or to `to`); the delivery task ids."""
        targets = to if to is not None else await self.webhooks.wanting(event, brand)
        if not targets:
            return []
        return list(
            await asyncio.gather(*(self._submit(w, event, data, brand, seed) for w in targets))
        )

    async def task_finished(self, record: TaskRecord) -> None:
        """A task reached a terminal state: `task.succeeded` or `task.failed` (expired and
        cancelled included, the record says which) with the record; a crawl's
        `crawl.completed` with its counts; a page indexed by a scrape or an embed task,
        `page.indexed`, or taken out, `page.removed`. Deliveries themselves announce nothing
        (no loops)."""
        if record.kind is Kind.WEBHOOK or not self.webhooks.any():
            return
        succeeded = record.status is Status.SUCCEEDED
        result = record.result or {}
        events = [WebhookEvent.TASK_SUCCEEDED if succeeded else WebhookEvent.TASK_FAILED]
        removal: PageRemoval | None = None
        if record.kind is Kind.CRAWL:
            events.append(WebhookEvent.CRAWL_COMPLETED)
        elif succeeded and "url" in result and not result.get("not_modified"):
            page = (WebhookEvent.PAGE_INDEXED, WebhookEvent.PAGE_REMOVED)
            if any(self.webhooks.matching(e, record.brand) for e in page):
                removal = await self._removal(record)
                events.append(WebhookEvent.PAGE_REMOVED if removal else WebhookEvent.PAGE_INDEXED)
        # Who wants what, before any body is built: most finished tasks (questions) go to
        # nobody.
        wanted = [(e, to) for e in events if (to := self.webhooks.matching(e, record.brand))]
        if not wanted:
            return
        seed = f"{record.task_id}:{record.status}"
        await asyncio.gather(
            *(
                self.announce(e, _data(e, record, removal), brand=record.brand, seed=seed, to=to)
                for e, to in wanted
            )
        )

    async def _removal(self, record: TaskRecord) -> PageRemoval | None:
        """The page a succeeded page task took out of the index, or None if it indexed one.

        A removal batch's record says so; a scrape's page that now answers 404/410 is
        reported with no chunks, as a page with no text would be: removed if no page of its
        brand is left under its URL. A removal that names no source gets the brand's source
        whose root folder holds the page, if any."""
        removal = record.removal
        buckets = self.tasks.bus.buckets
        if removal is None:
            result = record.result or {}
            url = str(result.get("url", ""))
            brand = record.brand
            if result.get("chunks_indexed") or not brand or not url.startswith("http"):
                return None
            if await find_by_url(buckets, url, lambda state: state.brand == brand):
                return None
            reason = RemovalReason.GONE if record.kind is Kind.SCRAPE else RemovalReason.DELETED
            removal = PageRemoval(url=url, brand=brand, reason=reason)
        if removal.source_id is None and removal.brand:
            for source in await SourceStore(buckets).all(removal.brand):
                if under(source.url)(removal.url):
                    return removal.model_copy(update={"source_id": source.id})
        return removal

    async def _submit(
        self,
        webhook: Webhook,
        event: WebhookEvent,
        data: dict[str, Any],
        brand: str | None,
        seed: str,
    ) -> str:
        task = delivery_task(webhook, event, data, seed, brand)
        # Listed before it is published, so the worker's first report cannot be overwritten.
        await self.deliveries.begin(
            Delivery(
                id=task.task_id,
                webhook_id=webhook.id,
                message_id=task.message_id,
                event=event,
                created_at=utcnow(),
            )
        )
        await self.tasks.submit(Kind.WEBHOOK, task)
        return task.task_id
