"""Delivering webhook events: one `webhook` task is one event for one webhook.

Each attempt signs the stored body anew (Standard Webhooks, `common.webhooks.signature`) with
the secret read from the bucket, under the task's `message_id`. The receiver's address is
checked by the SSRF guard before the request and again when the connection is made (the
pinned `GuardedTransport`: a name that re-resolves to a private address is refused);
redirects are not followed; at most `MAX_RESPONSE_BYTES` of the answer are read.

Timeouts, network errors, 408, 429 and 5xx are retried with exponential backoff (a
`Retry-After` is honoured up to the cap); the last attempt is dead-lettered by the worker.
Other answers fail the delivery at once. Timeouts, network errors and 5xx count against
the receiving host's breaker (`host:webhook:<name>`: apart from the scraper's for the same
host, counted with the per-site breakers in the metrics); while it is open, deliveries wait
and spend no attempt. Every attempt's outcome is written to the delivery's entry in `deliveries`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from helpline.common.breaker import BreakerPolicy
from helpline.common.bus import Bus
from helpline.common.errors import Deferred, Permanent, Retryable
from helpline.common.guard import AllowList, resolve_checked
from helpline.common.httpguard import GuardedTransport, parse_retry_after
from helpline.common.messages import WebhookTask, utcnow
from helpline.common.retrypolicy import RetryPolicy
from helpline.common.subjects import Kind
from helpline.common.taskpool import TaskConsumer
from helpline.common.webhooks import (
    Delivery,
    DeliveryLog,
    DeliveryStatus,
    WebhookEvent,
    WebhookStore,
    signature,
)
from helpline.common.worker import Result, TaskContext

USER_AGENT = "Helpline-Webhooks/0.1"
#: The most of a receiver's answer that is read (the rest is never downloaded).
MAX_RESPONSE_BYTES = 4096
_RETRIED = frozenset({408, 429})


@dataclass(frozen=True)
class WebhookRetry(RetryPolicy):
    """Backoff whose delay the handler chose (and wrote down as the next retry)."""

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return retry_after
        return super().delay(attempt)

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before attempt `attempt + 1`: doubling with jitter, at least Retry-After."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(attempt - 1, 0))
        wait = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self.cap_s)


class Deliverer:
    """Signs and sends deliveries over the guarded transport; one per process."""

    def __init__(
        self,
        bus: Bus,
        allow: AllowList,
        policy: WebhookRetry,
        breaker: BreakerPolicy,
        *,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.bus = bus
        self.allow = allow
        self.policy = policy
        self.breaker_policy = breaker
        self.timeout_s = timeout_s
        self.webhooks = WebhookStore(bus.buckets)
        self.log = DeliveryLog(bus.buckets)
        self.client = httpx.AsyncClient(
            transport=transport or GuardedTransport(allow),
            follow_redirects=False,
            timeout=timeout_s,
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        )

    async def start(self) -> None:
        """Follow the webhooks (a change or a deletion is seen within milliseconds)."""
        await self.webhooks.follow()

    async def aclose(self) -> None:
        await self.webhooks.stop()
        await self.client.aclose()

    async def deliver(self, task: WebhookTask, ctx: TaskContext) -> Result:
        entry = await self.log.get(task.webhook_id, task.task_id) or Delivery(
            id=task.task_id,
            webhook_id=task.webhook_id,
            message_id=task.message_id,
            event=WebhookEvent(task.event),
            created_at=task.created_at or utcnow(),
        )
        webhook = await self.webhooks.current(task.webhook_id)
        if webhook is None:
            await self._note(entry, ctx, DeliveryStatus.FAILED, error="the webhook was deleted")
            raise Permanent("the webhook was deleted before its delivery")
        host = urlsplit(webhook.url).hostname or ""
        breaker = self.bus.breakers.get(f"host:webhook:{host}", self.breaker_policy)
        started = time.perf_counter()
        status: int | None = None
        try:
            await resolve_checked(webhook.url, self.allow)
            breaker.before_call()
            status, retry_after = await self._post(webhook.url, webhook.secret, task)
        except Deferred as exc:
            wait = exc.retry_after
            await self._note(entry, ctx, DeliveryStatus.RETRYING, error=exc.message, wait=wait)
            raise
        except Permanent as exc:
            await self._note(entry, ctx, DeliveryStatus.FAILED, error=exc.message, started=started)
            raise
        except httpx.TimeoutException as exc:
            breaker.failed()
            reason = f"{host} did not answer within {self.timeout_s:g} s"
            raise await self._retry(entry, ctx, reason, None, started) from exc
        except httpx.TransportError as exc:
            breaker.failed()
            raise await self._retry(
                entry, ctx, f"network error reaching {host}", None, started
            ) from exc
        if 200 <= status < 300:
            breaker.succeeded()
            duration = await self._note(
                entry, ctx, DeliveryStatus.DELIVERED, status, started=started
            )
            return {"status_code": status, "duration_ms": duration, "event": task.event}
        reason = f"{host} answered HTTP {status}"
        if status in _RETRIED or status >= 500:
            if status != 429:
                breaker.failed()
            raise await self._retry(entry, ctx, reason, retry_after, started, status)
        if 300 <= status < 400:
            reason += " (redirects are not followed)"
        await self._note(entry, ctx, DeliveryStatus.FAILED, status, error=reason, started=started)
        raise Permanent(reason)

    async def _post(self, url: str, secret: str, task: WebhookTask) -> tuple[int, float | None]:
        """Send one attempt; the status and the Retry-After it asked for."""
        stamp = int(time.time())
        headers = {
            "webhook-id": task.message_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature(secret, task.message_id, stamp, task.body),
        }
        async with self.client.stream(
            "POST", url, content=task.body.encode(), headers=headers
        ) as response:
            read = 0
            async for piece in response.aiter_raw():
                read += len(piece)
                if read >= MAX_RESPONSE_BYTES:
                    break
            return response.status_code, parse_retry_after(response.headers.get("retry-after"))

    async def _retry(
        self,
        entry: Delivery,
        ctx: TaskContext,
        reason: str,
        retry_after: float | None,
        started: float,
        status: int | None = None,
    ) -> Retryable:
        """What to raise for a failed attempt: retried after the chosen delay, or, on the last
        attempt, dead-lettered by the worker."""
        if ctx.attempt >= self.policy.max_attempts:
            await self._note(
                entry, ctx, DeliveryStatus.DEAD_LETTERED, status, error=reason, started=started
            )
            return Retryable(reason)
        wait = self.policy.backoff(ctx.attempt, retry_after)
        await self._note(
            entry, ctx, DeliveryStatus.RETRYING, status, error=reason, started=started, wait=wait
        )
        return Retryable(reason, retry_after=wait)

    async def _note(
        self,
        entry: Delivery,
        ctx: TaskContext,
        status: DeliveryStatus,
        status_code: int | None = None,
        *,
        error: str | None = None,
        started: float | None = None,
        wait: float | None = None,
    ) -> float | None:
        """Write this attempt's outcome to the delivery's entry; its duration in ms."""
        now = utcnow()
        duration = round((time.perf_counter() - started) * 1000, 2) if started is not None else None
        fields: dict[str, Any] = {
            "status": status,
            "error": error,
            "next_retry_at": now + timedelta(seconds=wait) if wait is not None else None,
        }
        if started is not None:  # an attempt was made (not only waited on a breaker)
            fields.update(
                status_code=status_code,
                attempts=max(entry.attempts, ctx.attempt),
                duration_ms=duration,
                last_attempt_at=now,
            )
        await self.log.put(entry.model_copy(update=fields))
        return duration


def build_consumer(bus: Bus, deliverer: Deliverer, *, concurrency: int) -> TaskConsumer:
    """The `webhook` pool: deliveries retried by the deliverer's own policy."""
    return TaskConsumer(
        bus,
        Kind.WEBHOOK,
        WebhookTask,
        deliverer.deliver,
        concurrency=concurrency,
        policy=deliverer.policy,
        # Many at once, all waiting on the network: batch priorities may use them all.
        bulk_concurrency=concurrency,
    )


def retry_for(base_s: float, cap_s: float, attempts: int) -> WebhookRetry:
    return replace(WebhookRetry(), base_s=base_s, cap_s=cap_s, max_attempts=attempts)
