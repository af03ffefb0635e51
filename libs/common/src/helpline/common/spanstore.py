"""Recent traces kept on the bus: the trace store behind the gateway's trace view.

Every process that records spans (`observability.setup_tracing` with the store on) adds a
`SpanStore`, a span processor: a finished span waits in memory for a tenth of a second,
then the process's spans of each trace go out as one message on `<prefix>.traces.<trace
id>` (core NATS, no acknowledgement awaited, as the request log: the store never slows
what it records) into the stream `<PREFIX>_TRACES`, which keeps a day and at most
128 MiB, dropping the oldest. A trace's spans from every process, gateway, rag or
scraper, on any machine, are then one subject: `read` gets them from any replica.

`view` turns the stored spans into what a person reads: each with its service (the
gateway, the kind of task it ran, or the tracer that made it), offset and duration from
the trace's start, in tree order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import threading
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from helpline.common import subjects
from helpline.common.subjects import Kind

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Span, TracerProvider

#: How long a finished span waits, so that a trace's spans go out together.
FLUSH_AFTER_S = 0.1
#: Spans waiting at most (a bus that does not keep up loses the oldest, never blocks).
MAX_PENDING = 20_000
#: An attribute's text is cut to this many characters.
MAX_VALUE_CHARS = 512
#: Of a span's events (an exception's), at most this many are kept.
MAX_EVENTS = 8
#: The most spans one trace read returns.
MAX_SPANS = 5_000

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_SERVICES = frozenset({"gateway", "scraper", "embedder", "rag", "maintenance"})
_SERVICE_OF_KIND = {
    Kind.SCRAPE: "scraper",
    Kind.CRAWL: "scraper",
    Kind.EMBED: "embedder",
    Kind.QUERY: "rag",
    Kind.MAINTENANCE: "maintenance",
    Kind.WEBHOOK: "maintenance",
}
_HTTP_SCOPES = ("opentelemetry.instrumentation.fastapi", "opentelemetry.instrumentation.asgi")
_TASK_SPAN = re.compile(r"\.tasks\.(?P<kind>[a-z]+)\.[a-z]+ process$")


class _Target:
    """One bus connection spans go to, and the task on its event loop that sends them."""

    def __init__(self, nc: Client, prefix: str) -> None:
        self.nc = nc
        self.prefix = prefix
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.pending: deque[ReadableSpan] = deque(maxlen=MAX_PENDING)
        self.wake = asyncio.Event()
        self.task = self.loop.create_task(self._run())

    def add(self, span: ReadableSpan) -> None:
        self.pending.append(span)
        if self.wake.is_set():
            return
        if threading.get_ident() == self.thread:
            self.wake.set()
        else:  # a span that ended in a worker thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nowhere to send
                self.loop.call_soon_threadsafe(self.wake.set)

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            await asyncio.sleep(FLUSH_AFTER_S)
            self.wake.clear()
            await self.flush()

    async def flush(self) -> None:
        by_trace: dict[str, list[dict[str, Any]]] = {}
        while self.pending:
            span = self.pending.popleft()
            entry = record(span)
            by_trace.setdefault(entry["trace_id"], []).append(entry)
        limit = max(1024, self.nc.max_payload // 2) if self.nc.is_connected else 0
        for trace_id, entries in by_trace.items():
            subject = subjects.traces(trace_id, self.prefix)
            for payload in _payloads(entries, limit):
                with contextlib.suppress(Exception):  # the bus is down: these spans are lost
                    await self.nc.publish(subject, payload)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        with contextlib.suppress(Exception):
            await self.flush()


def _payloads(entries: list[dict[str, Any]], limit: int) -> list[bytes]:
    """`entries` as JSON arrays of at most `limit` bytes each (a span over it is dropped)."""
    whole = json.dumps(entries, separators=(",", ":"), default=str).encode()
    if len(whole) <= limit:  # nearly always: one trace's spans of a tenth of a second
        return [whole]
    out: list[bytes] = []
    batch: list[bytes] = []
    size = 2
    for entry in entries:
        encoded = json.dumps(entry, separators=(",", ":"), default=str).encode()
        if len(encoded) + 3 > limit:
            continue
        if batch and size + len(encoded) + 1 > limit:
            out.append(b"[" + b",".join(batch) + b"]")
            batch, size = [], 2
        batch.append(encoded)
        size += len(encoded) + 1
    if batch:
        out.append(b"[" + b",".join(batch) + b"]")
    return out


def _attributes(attributes: Mapping[str, object] | None) -> dict[str, object]:
    """Attributes with long texts cut (sequences are kept as they are: JSON lists)."""
    if not attributes:
        return {}
    return {
        k: v[:MAX_VALUE_CHARS] if type(v) is str and len(v) > MAX_VALUE_CHARS else v
        for k, v in attributes.items()
    }


_STATUS = {StatusCode.UNSET: "unset", StatusCode.OK: "ok", StatusCode.ERROR: "error"}
_KINDS = {kind: kind.name.lower() for kind in SpanKind}


def record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as the store keeps it."""
    ctx = span.get_span_context()
    parent = span.parent
    status = span.status
    scope = span.instrumentation_scope
    start = span.start_time or 0
    entry: dict[str, Any] = {
        "trace_id": f"{ctx.trace_id:032x}" if ctx else "",
        "span_id": f"{ctx.span_id:016x}" if ctx else "",
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "name": span.name,
        "kind": _KINDS[span.kind],
        "scope": scope.name if scope else "",
        "process": _process(span.resource),
        "instance": _INSTANCE,
        "start_ns": start,
        "end_ns": span.end_time or start,
        "attributes": _attributes(span.attributes),
        "status": _STATUS[status.status_code],
    }
    if status.description:
        entry["status_message"] = status.description[:MAX_VALUE_CHARS]
    events = span.events
    if events:
        entry["events"] = [
            {
                "name": event.name,
                "offset_ms": round(((event.timestamp or 0) - start) / 1e6, 3),
                "attributes": _attributes(event.attributes),
            }
            for event in events[:MAX_EVENTS]
        ]
    return entry


_PROCESS_NAMES: dict[int, str] = {}


def _process(resource: Resource) -> str:
    """The resource's service name (a process has one resource: looked up once)."""
    name = _PROCESS_NAMES.get(id(resource))
    if name is None:
        name = _PROCESS_NAMES[id(resource)] = str(resource.attributes.get("service.name", ""))
    return name


_INSTANCE = f"{socket.gethostname()}-{os.getpid()}"


class SpanStore(SpanProcessor):
    """Sends the spans this process finishes to the trace store of the bus attached last."""

    def __init__(self) -> None:
        self._targets: list[_Target] = []
        self.closed = False

    def attach(self, nc: Client, prefix: str) -> None:
        """Send spans over `nc` to the trace store of the deployment named by `prefix`."""
        if not self.closed:
            self._targets.append(_Target(nc, prefix))

    async def detach(self, nc: Client) -> None:
        """Stop sending over `nc`, after the spans that wait for it."""
        for target in [t for t in self._targets if t.nc is nc]:
            self._targets.remove(target)
            await target.close()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        targets = self._targets
        if targets:
            targets[-1].add(span)

    def shutdown(self) -> None:
        self.closed = True
        for target in self._targets:
            target.task.cancel()
        self._targets.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_store: SpanStore | None = None


def install(provider: TracerProvider) -> SpanStore:
    """This process's span store, added to `provider` once (again after a `shutdown`)."""
    global _store
    if _store is None or _store.closed:
        _store = SpanStore()
        provider.add_span_processor(_store)
    return _store


def attach(nc: Client, prefix: str) -> None:
    """Where a span store is installed, send its spans over `nc` (a host's bus connection)."""
    if _store is not None:
        _store.attach(nc, prefix)


async def detach(nc: Client) -> None:
    """Stop sending spans over `nc`, which is about to close."""
    if _store is not None:
        await _store.detach(nc)


async def read(
    js: JetStreamContext, prefix: str, trace_id: str, *, timeout_s: float = 5.0
) -> list[dict[str, Any]]:
    """Every stored span of one trace, from every process (at most `MAX_SPANS`)."""
    subject = subjects.traces(trace_id, prefix)
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=10.0,
        mem_storage=True,
    )
    sub = await js.pull_subscribe(
        subject, durable=None, stream=subjects.traces_stream(prefix), config=config
    )
    spans: list[dict[str, Any]] = []
    try:
        info = await sub.consumer_info()
        left = info.num_pending or 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while left > 0 and len(spans) < MAX_SPANS and loop.time() < deadline:
            try:
                batch = await sub.fetch(min(left, 256), timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                break  # aged out meanwhile
            left -= len(batch)
            for msg in batch:
                with contextlib.suppress(ValueError):
                    spans.extend(e for e in json.loads(msg.data) if isinstance(e, dict))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return spans[:MAX_SPANS]


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat().replace("+00:00", "Z")


def _own_service(entry: dict[str, Any]) -> str | None:
    """The service a span says it belongs to, if it says."""
    scope = str(entry.get("scope", ""))
    if scope.startswith(_HTTP_SCOPES):
        return "gateway"
    task = _TASK_SPAN.search(str(entry.get("name", "")))
    if task and task["kind"] in _SERVICE_OF_KIND:
        return _SERVICE_OF_KIND[Kind(task["kind"])]
    parts = scope.split(".")
    if len(parts) >= 2 and parts[0] == "helpline" and parts[1] in _SERVICES:
        return parts[1]
    process = str(entry.get("process", ""))
    if process.startswith("helpline-") and process[len("helpline-") :] in _SERVICES:
        return process[len("helpline-") :]
    return None


def view(trace_id: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A trace as a person reads it: spans in tree order with service, offset and duration."""
    by_id = {e["span_id"]: e for e in entries if e.get("span_id")}
    services: dict[str, str] = {}

    def service_of(entry: dict[str, Any], seen: int = 0) -> str:
        span_id = entry["span_id"]
        if span_id in services:
            return services[span_id]
        found = _own_service(entry)
        if found is None:
            parent = by_id.get(entry.get("parent_id") or "")
            # A span of no service of its own (a publish, a store call) is its caller's, in
            # the same process.
            if parent is not None and parent.get("instance") == entry.get("instance") and seen < 64:
                found = service_of(parent, seen + 1)
            else:
                found = str(entry.get("process") or "unknown")
        services[span_id] = found
        return found

    spans = sorted(by_id.values(), key=lambda e: (int(e["start_ns"]), str(e["span_id"])))
    start = min((int(e["start_ns"]) for e in spans), default=0)
    end = max((int(e["end_ns"]) for e in spans), default=0)
    children: dict[str | None, list[dict[str, Any]]] = {}
    for entry in spans:
        parent_id = entry.get("parent_id")
        children.setdefault(parent_id if parent_id in by_id else None, []).append(entry)
    ordered: list[tuple[dict[str, Any], int]] = []
    stack = [(e, 0) for e in reversed(children.get(None, []))]
    while stack:
        entry, depth = stack.pop()
        ordered.append((entry, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(entry["span_id"], [])))
    rows = [
        {
            "span_id": entry["span_id"],
            "parent_id": entry.get("parent_id"),
            "name": entry.get("name", ""),
            "service": service_of(entry),
            "kind": entry.get("kind", ""),
            "depth": depth,
            "start": _iso(int(entry["start_ns"])),
            "offset_ms": round((int(entry["start_ns"]) - start) / 1e6, 3),
            "duration_ms": round((int(entry["end_ns"]) - int(entry["start_ns"])) / 1e6, 3),
            "status": entry.get("status", "unset"),
            "status_message": entry.get("status_message"),
            "attributes": entry.get("attributes", {}),
            "events": entry.get("events", []),
            "process": entry.get("process"),
            "instance": entry.get("instance"),
        }
        for entry, depth in ordered
    ]
    return {
        "trace_id": trace_id,
        "started_at": _iso(start) if spans else None,
        "duration_ms": round((end - start) / 1e6, 3),
        "span_count": len(rows),
        "services": sorted({r["service"] for r in rows}),
        "errors": sum(1 for r in rows if r["status"] == "error"),
        "spans": rows,
    }
