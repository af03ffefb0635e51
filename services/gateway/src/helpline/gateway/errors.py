"""Errors as HTTP responses: one table, by exception class.

Routes raise what went wrong; `RESPONSES` alone says which status and headers it gets.
Every error body is `{"detail": "…"}` (422s add `errors`), never a stack trace.

```
HelplineError (helpline.common.errors)
  GatewayError
    GatewayStarting    503, Retry-After: 1   (no bus attached yet)
    Unauthenticated    401, WWW-Authenticate (no key, or an unknown or revoked one)
    Forbidden          403                   (the key lacks the scope or the brand)
    RateLimited        429, Retry-After, RateLimit-*  (the key's rate limit, shared)
    TooManyQueries     429, Retry-After: 1   (this replica's questions in flight)
    BodyTooLarge       413                   (HELPLINE_MAX_BODY_BYTES, counted as it arrives)
    NotFound           404                   (TaskNotFound, DeadLetterNotFound, CacheOff)
    Conflict           409                   (TaskFinished, NotReplayable)
    QueryFailed        502                   (rag answered with an error)
    QueryTimeout       504                   (no answer before the deadline)
  Overloaded           503, Retry-After      (the bus refused the task)
  InputRejected        422
BUS_ERRORS             503, Retry-After      (the bus did not answer: BUS_SILENT)
RequestValidationError 422, naming each field
anything else          500, "internal error"
```
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from helpline.common.errors import BUS_ERRORS, BUS_SILENT, HelplineError, InputRejected, Overloaded
from helpline.common.records import Status

log = logging.getLogger(__name__)

#: How long a client is asked to wait after a 503 the bus caused.
RETRY_AFTER_S = 5
_RETRY = {"Retry-After": str(RETRY_AFTER_S)}


class GatewayError(HelplineError):
    """A request the gateway cannot answer as asked; `str()` is the client's `detail`."""


class GatewayStarting(GatewayError):
    def __init__(self) -> None:
        super().__init__("the gateway is starting")


class Unauthenticated(GatewayError):
    """No key, or one that is not (or no longer) valid: the body never says which key exists."""


class Forbidden(GatewayError):
    """The key is valid but may not do this (scope) or not for this brand."""


class RateLimited(GatewayError):
    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__("this key's rate limit is spent; retry after the Retry-After seconds")
        self.headers = dict(headers)


class TooManyQueries(GatewayError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this gateway is answering its limit of {limit} questions at once; retry shortly"
        )


class BodyTooLarge(GatewayError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over the limit of {limit} bytes")


class NotFound(GatewayError):
    """The resource named in the path does not exist."""


class TaskNotFound(NotFound):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r}")


class DeadLetterNotFound(NotFound):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"no dead letter for task {task_id!r}")


class CacheOff(NotFound):
    def __init__(self) -> None:
        super().__init__("the answer cache is turned off (HELPLINE_ANSWER_CACHE=false)")


class Conflict(GatewayError):
    """The resource exists but its state forbids the request."""


class TaskFinished(Conflict):
    def __init__(self, task_id: str, status: Status) -> None:
        super().__init__(f"task {task_id} already {status}")


class NotReplayable(Conflict):
    def __init__(self) -> None:
        super().__init__("this dead letter is not a valid task and cannot be replayed")


class QueryFailed(GatewayError):
    def __init__(self, error: str) -> None:
        super().__init__(f"the query failed: {error}")


class QueryTimeout(GatewayError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"the query was not answered before its deadline (no answer within {timeout_s:g}s)"
        )


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Said instead of the exception's text, which may carry internals (it is logged).
    detail: str | None = None


RESPONSES: dict[type[Exception], Reply] = {
    GatewayStarting: Reply(503, {"Retry-After": "1"}),
    Unauthenticated: Reply(401, {"WWW-Authenticate": "Bearer"}),
    Forbidden: Reply(403),
    RateLimited: Reply(429),
    TooManyQueries: Reply(429, {"Retry-After": "1"}),
    BodyTooLarge: Reply(413),
    NotFound: Reply(404),
    Conflict: Reply(409),
    QueryFailed: Reply(502),
    QueryTimeout: Reply(504),
    Overloaded: Reply(503, _RETRY),
    InputRejected: Reply(422),
    **{error: Reply(503, _RETRY, BUS_SILENT) for error in BUS_ERRORS},
    Exception: Reply(500, detail="internal error"),
}


def reply_for(exc: Exception) -> Reply:
    """The table's row for `exc`: its own class's, else its nearest base class's."""
    for cls in type(exc).__mro__:
        reply = RESPONSES.get(cls)
        if reply is not None:
            return reply
    return RESPONSES[Exception]


def detail_of(exc: Exception) -> str:
    reply = reply_for(exc)
    return reply.detail if reply.detail is not None else str(exc)


async def respond(request: Request, exc: Exception) -> JSONResponse:
    reply = reply_for(exc)
    where = f"{request.method} {request.url.path}"
    if reply.status == 500:
        log.error("unhandled error on %s", where, exc_info=exc)
    elif reply.detail is not None:
        # A read the bus did not answer (a listing, a record): the client may retry.
        log.warning("%s: the bus did not answer (%r)", where, exc)
    body: dict[str, Any] = {"detail": detail_of(exc)}
    if isinstance(exc, InputRejected) and exc.field:
        body["errors"] = [{"field": exc.field, "message": exc.message}]
    # What the exception itself adds (a rate limit's Retry-After and RateLimit-*).
    headers = {**reply.headers, **(exc.headers if isinstance(exc, RateLimited) else {})}
    return JSONResponse(body, status_code=reply.status, headers=headers or None)


async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body, query or path that does not validate: name the field and the reason, never
    echo internals."""
    errors = [
        {
            "field": ".".join(
                str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")
            ),
            "location": str(err.get("loc", ("",))[0]),
            "message": str(err.get("msg", "invalid")),
            "type": str(err.get("type", "value_error")),
        }
        for err in exc.errors()
    ]
    return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own errors (404 of no route, 405, 400 of a body that is not JSON), with a
    405's `Allow` listing every method of the path, not only the first route's."""
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    path = request.url.path
    methods = sorted(
        {
            method
            for route in request.app.router.routes
            if isinstance(route, APIRoute) and route.path_regex.match(path)
            for method in route.methods or ()
        }
    )
    return JSONResponse(
        {"detail": f"{request.method} is not allowed here; allowed: {', '.join(methods)}"},
        status_code=405,
        headers={"Allow": ", ".join(methods)},
    )


def install(app: FastAPI) -> None:
    """Register the table's handlers (and the validation one) on `app`."""
    app.exception_handler(RequestValidationError)(invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    for error in RESPONSES:
        app.add_exception_handler(error, respond)
