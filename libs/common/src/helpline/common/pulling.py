"""Pulling from a durable JetStream consumer: messages handed over as they arrive, in batches.

A `Puller` keeps at most one pull request open on its consumer, for as many messages as
its owner asks (`want`). The server delivers them one by one as they become available,
so an idle consumer answers within a round trip and a busy one fills a whole batch per
request; the request ends when all its messages came, or when it expires (the server says
so with a status message), and the owner is asked whether it wants more. nats-py's
`fetch` either takes one message per request, or holds back a partly filled batch until
its timeout: neither serves a queue that must be both fast when idle and cheap when busy.

A request whose end never arrives (a restarted server forgets it) is given up after its
expiry and a grace period, and a new one is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from nats.js import api

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

_GRACE_S = 2.0


class Puller:
    """One durable consumer's messages, `on_message(msg)` for each, at most one request open."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        on_message: Callable[[Msg], None],
        *,
        on_idle: Callable[[], None] | None = None,
        expires_s: float = 2.0,
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()  # under the connection's inbox prefix
        self._on_message = on_message
        self._on_idle = on_idle
        self._expires_s = expires_s
        self._sub: Subscription | None = None
        self._remaining = 0  # messages the open request may still deliver
        self._deadline = 0.0  # when an open request is given up as lost
        self._watchdog: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def open(self) -> bool:
        """Whether a request is open (its messages may still come)."""
        return self._remaining > 0

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._deliver)
        self._watchdog = asyncio.create_task(self._watch())

    def want(self, count: int) -> None:
        """Ask for up to `count` messages, unless a request is already open."""
        if self._stopped or self._remaining > 0 or count <= 0:
            return
        self._remaining = count
        self._deadline = time.monotonic() + self._expires_s + _GRACE_S
        request = json.dumps({"batch": count, "expires": int(self._expires_s * 1e9)}).encode()
        sending = asyncio.create_task(self._send(request))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _send(self, request: bytes) -> None:
        try:
            await self._nc.publish(self._next_subject, request, reply=self._inbox)
        except Exception as exc:  # disconnected: the watchdog sends another in a moment
            log.debug("pull request on %s: %r", self._next_subject, exc)

    async def _deliver(self, msg: Msg) -> None:
        status = msg.headers.get(api.Header.STATUS) if msg.headers else None
        if status:
            if status == api.StatusCode.CONTROL_MESSAGE:
                return
            # 408: the request expired; 409 and others (too many requests, the consumer is
            # gone or moving): ask again, but not in a tight loop.
            if status == api.StatusCode.REQUEST_TIMEOUT:
                self._finished()
            else:
                log.debug("pull on %s: %s %s", self._next_subject, status, msg.headers)
                self._remaining = 0
                asyncio.get_running_loop().call_later(0.5, self._finished)
            return
        if self._stopped:
            with contextlib.suppress(Exception):
                await msg.nak()
            return
        self._remaining -= 1
        self._on_message(msg)
        if self._remaining <= 0:
            self._finished()

    def _finished(self) -> None:
        self._remaining = 0
        if not self._stopped and self._on_idle is not None:
            self._on_idle()

    async def _watch(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self._expires_s)
            if self._remaining > 0 and time.monotonic() > self._deadline:
                log.debug("pull request on %s lost; asking again", self._next_subject)
                self._finished()

    async def stop(self) -> None:
        """No more requests; messages still arriving are handed back."""
        self._stopped = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        sub, self._sub = self._sub, None
        if sub is None:
            return
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        # What arrived but was not handed over yet goes back now, not after ack_wait
        # (nats-py has no API for a subscription's queue).
        queue: asyncio.Queue[Msg] = sub._pending_queue
        while not queue.empty():
            msg = queue.get_nowait()
            if msg.reply and not (msg.headers and msg.headers.get(api.Header.STATUS)):
                with contextlib.suppress(Exception):
                    await msg.nak()
