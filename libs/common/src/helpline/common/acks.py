"""Publishing to JetStream with many acknowledgements awaited at once, on one inbox."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from nats.js import api
from nats.js.errors import (
    APIError,
    BadRequestError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

PUBLISH_TIMEOUT_S = 5.0
# JetStream's "wrong last sequence" error codes: the compare in compare-and-swap failed.
WRONG_LAST_SEQUENCE = (10071, 10164)


class Publish(Protocol):
    """Put a message on a stream and wait for its acknowledgement."""

    async def __call__(
        self, subject: str, payload: bytes, *, stream: str, headers: dict[str, str]
    ) -> None: ...


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
        self._prefix = nc.new_inbox() + "."  # under the connection's inbox prefix
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
