"""The request log: every gateway replica's finished requests, in one bounded stream.

Each replica publishes one small JSON entry per request (core NATS, no acknowledgement
awaited: the log must never slow a request down) to the stream `<PREFIX>_REQUESTS`, which
keeps a day and at most 200,000 entries. Any replica reads the tail for the views: stats
per route, slow requests, errors (the request log's 5xx, and failed tasks from their
records), each entry with its trace id and, where a tracing UI is known, a link to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api

from helpline.common import spanstore, subjects
from helpline.common.messages import utcnow
from helpline.common.records import Status

if TYPE_CHECKING:
    from helpline.common.bus import Bus
    from helpline.common.taskstore import TaskStore

log = logging.getLogger(__name__)

#: The most entries one view reads (newest first).
MAX_SCAN = 10_000
#: Entries asked for in one pull request.
PAGE = 1_000


class RequestLog:
    """Write this replica's finished requests; read every replica's."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.subject = subjects.requests(bus.layout.prefix)
        self.stream = subjects.requests_stream(bus.layout.prefix)

    async def add(self, entry: dict[str, Any]) -> None:
        """Log one request; a bus that is down loses the entry, never the request."""
        with contextlib.suppress(Exception):
            await self.bus.nc.publish(self.subject, json.dumps(entry).encode())

    async def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every stored span of one trace, every process's (`spanstore`)."""
        return await spanstore.read(self.bus.js, self.bus.layout.prefix, trace_id)

    async def tail(self, n: int, *, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The last `n` entries (at most `MAX_SCAN`), newest first."""
        info = await self.bus.js.stream_info(self.stream)
        first, last = info.state.first_seq or 0, info.state.last_seq or 0
        if last == 0 or (info.state.messages or 0) == 0:
            return []
        start = max(first, last - min(n, MAX_SCAN) + 1)
        entries = await self._read(start, last, timeout_s)
        entries.reverse()
        return entries

    async def _read(self, start: int, last: int, timeout_s: float) -> list[dict[str, Any]]:
        """Entries from sequence `start` through `last`, through an ephemeral consumer."""
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=10.0,
            mem_storage=True,
        )
        sub = await self.bus.js.pull_subscribe(
            self.subject, durable=None, stream=self.stream, config=config
        )
        entries: list[dict[str, Any]] = []
        try:
            reached = start - 1
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while reached < last and loop.time() < deadline:
                try:
                    batch = await sub.fetch(min(PAGE, last - reached), timeout=1.0)
                except (TimeoutError, NatsTimeoutError):
                    break  # aged out meanwhile: what is left is all there is
                for msg in batch:
                    reached = max(reached, msg.metadata.sequence.stream)
                    with contextlib.suppress(ValueError):
                        entries.append(json.loads(msg.data))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return entries


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    durations = sorted(float(e["duration_ms"]) for e in entries)
    count = len(entries)
    errors = sum(1 for e in entries if int(e["status"]) >= 500)
    times = [datetime.fromisoformat(e["at"]) for e in entries]
    minutes = (max(times) - min(times)).total_seconds() / 60 if count > 1 else 0.0
    return {
        "count": count,
        "errors": errors,
        "error_rate": round(errors / count, 4) if count else 0.0,
        "client_errors": sum(1 for e in entries if 400 <= int(e["status"]) < 500),
        "p50_ms": round(_percentile(durations, 0.50), 2),
        "p95_ms": round(_percentile(durations, 0.95), 2),
        "p99_ms": round(_percentile(durations, 0.99), 2),
        "mean_ms": round(sum(durations) / count, 2) if count else 0.0,
        "requests_per_minute": round(count / minutes, 2) if minutes > 0 else float(count),
    }


def stats(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per route (method and template) and overall: count, errors, percentiles, rate."""
    by_route: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        by_route[f"{entry['method']} {entry['route']}"].append(entry)
    return {
        "overall": _summary(entries),
        "routes": {route: _summary(group) for route, group in sorted(by_route.items())},
    }


def slow(entries: list[dict[str, Any]], threshold_ms: float, limit: int) -> list[dict[str, Any]]:
    """Requests that took at least `threshold_ms`, newest first."""
    return [e for e in entries if float(e["duration_ms"]) >= threshold_ms][:limit]


async def errors(
    entries: list[dict[str, Any]], store: TaskStore, *, limit: int, include_4xx: bool
) -> list[dict[str, Any]]:
    """Requests answered with an error and tasks that failed, newest first."""
    floor = 400 if include_4xx else 500
    found: list[dict[str, Any]] = [
        {"source": "request", **e} for e in entries if int(e["status"]) >= floor
    ]
    failed = await store.scan(match=lambda raw: b'"status":"failed"' in raw)
    for record in failed:
        found.append(
            {
                "source": "task",
                "at": (record.finished_at or record.created_at or utcnow()).isoformat(),
                "kind": str(record.kind),
                "task_id": record.task_id,
                "status": str(Status.FAILED),
                "error": record.error.model_dump() if record.error else None,
                "trace_id": record.trace_id,
            }
        )
    found.sort(key=lambda e: str(e["at"]), reverse=True)
    return found[:limit]


class TraceLinks:
    """Where a trace id leads: the tracing UI's page for it (`HELPLINE_TRACE_UI_URL`, Jaeger's
    `/trace/<id>` layout), else the gateway's own trace page when the trace store is on."""

    def __init__(self, ui_url: str | None, *, own_page: bool) -> None:
        self.ui_url = ui_url.rstrip("/") if ui_url else None
        self.own_page = own_page

    def url(self, trace_id: str, base_url: str) -> str | None:
        """The link for `trace_id`; `base_url` is the gateway's, as the client reached it."""
        if self.ui_url:
            return f"{self.ui_url}/trace/{trace_id}"
        if self.own_page:
            return f"{base_url.rstrip('/')}/traces/{trace_id}"
        return None

    def add(self, entries: list[dict[str, Any]], base_url: str) -> list[dict[str, Any]]:
        """`entries`, each with a trace id given its `trace_url`."""
        return [
            {**e, "trace_url": self.url(str(e["trace_id"]), base_url)} if e.get("trace_id") else e
            for e in entries
        ]
