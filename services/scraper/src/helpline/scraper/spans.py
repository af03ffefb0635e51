"""The scraper's spans: what a page's time went to (fetch, robots, politeness, render, parse).

Spans here never carry a URL's query string, userinfo or fragment (`url.full` is
`traced_url`), and a failure is recorded by its error type only: the scraper's error
messages name the full URL, which an exception event would copy into the trace.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes

from helpline.common.observability import span

tracer = trace.get_tracer("helpline.scraper")


def traced_url(url: str) -> str:
    """`url` as a span may carry it: scheme, host, port and path (no query, no credentials)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def server_attributes(url: str) -> dict[str, str | int]:
    """`server.address` (and `server.port` when the URL names one) of `url`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return {}
    out: dict[str, str | int] = {"server.address": parts.hostname or ""}
    if port is not None:
        out["server.port"] = port
    return out


@contextmanager
def step(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes = None
) -> Iterator[Span]:
    """A child span of the task's (`observability.span`, so free when unsampled) that
    records a failure as its type; yields the span to add attributes to (a non-recording
    one when none was built)."""
    error: Exception | None = None
    with span(tracer, name, kind=kind, attributes=attributes):
        current = trace.get_current_span()
        try:
            yield current
        except Exception as exc:
            kind_of_error = type(exc).__name__
            current.set_attribute("error.type", kind_of_error)
            current.set_status(Status(StatusCode.ERROR, kind_of_error))
            error = exc
    if error is not None:
        raise error


def record_steps(steps: list[tuple[str, int, int, Attributes]]) -> None:
    """Spans for work done elsewhere (an extraction process), from its wall-clock times in
    ns, as children of the current span; nothing when it is not recorded."""
    parent = trace.get_current_span()
    if not parent.is_recording():
        return
    now = time.time_ns()
    for name, start, end, attributes in steps:
        child = tracer.start_span(name, attributes=attributes, start_time=min(start, now))
        child.end(end_time=min(max(start, end), now))
