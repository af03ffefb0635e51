"""Bounded requests: bodies over `HELPLINE_MAX_BODY_BYTES` and the rate-limit headers.

A plain ASGI middleware. A declared `Content-Length` over the limit is answered 413 before
a byte of the body is read; a body without one (chunked) is counted as it arrives and
refused at the first byte over: reading it raises, and whatever response the app makes of
that (FastAPI turns any error while reading a body into a 400) is replaced by the 413.
Whatever the
key's rate limit said (`request.state.rate_headers`, set by `auth`) is added to the
response's headers.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helpline.gateway.errors import BodyTooLarge


class BoundedRequests:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, str(BodyTooLarge(limit)))
            return
        received = 0
        over = False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise BodyTooLarge(limit)
            return message

        async def with_rate_headers(message: Message) -> None:
            if over:
                if message["type"] == "http.response.start":
                    await _refuse(send, str(BodyTooLarge(limit)))
                return  # the app's own answer to the error is dropped
            if message["type"] == "http.response.start":
                extra = scope.get("state", {}).get("rate_headers")
                if extra:
                    headers = list(message.get("headers", []))
                    present = {name.lower() for name, _ in headers}
                    headers.extend(
                        (name.lower().encode(), value.encode())
                        for name, value in extra.items()
                        if name.lower().encode() not in present
                    )
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, counted if declared is None else receive, with_rate_headers)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
