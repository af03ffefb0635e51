"""What every request leaves behind: its metrics, an `X-Trace-Id` header, one access-log line.

A plain ASGI middleware (not Starlette's `BaseHTTPMiddleware`, which costs a task per
request), inside the OpenTelemetry middleware so that the request's span is current. The
route label is the matched route's template (`/api/v1/tasks/{task_id}`), never the path;
a request no route matched is `unmatched`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helpline.common import metrics
from helpline.common.messages import utcnow

access = logging.getLogger("helpline.access")

#: Paths whose requests are not logged (probes and scrapes come every few seconds).
QUIET = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestTelemetry:
    """Count and time each HTTP request, label its response with its trace id, log it."""

    def __init__(
        self,
        app: ASGIApp,
        templates: dict[int, str] | None = None,
        *,
        count: bool = True,
        log_lines: bool = True,
    ) -> None:
        self.app = app
        self._templates = dict(templates or {})
        self._count = count  # metrics and the request log (HELPLINE_METRICS)
        self._log_lines = log_lines  # the access log (HELPLINE_ACCESS_LOG)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context = trace.get_current_span().get_span_context()
        trace_id = format(context.trace_id, "032x") if context.is_valid else None
        status = 500

        async def send_with_trace_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if trace_id is not None:
                    headers = list(message.get("headers", []))
                    headers.append((b"x-trace-id", trace_id.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace_id)
        finally:
            entry = self._record(scope, status, time.perf_counter() - started, trace_id)
            requests = getattr(scope["app"].state, "request_log", None) if "app" in scope else None
            if entry is not None and requests is not None:
                await requests.add(entry)

    def _record(
        self, scope: Scope, status: int, elapsed: float, trace_id: str | None
    ) -> dict[str, Any] | None:
        """Count and log the request; its request-log entry (None for probes and scrapes)."""
        route: Any = scope.get("route")
        template = self._templates.get(id(route)) or str(getattr(route, "path", "unmatched"))
        method = str(scope.get("method", ""))
        if self._count:
            metrics.HTTP_REQUESTS.labels(template, method, str(status)).inc()
            metrics.HTTP_DURATION.labels(template, method).observe(elapsed)
        if template in QUIET or not (self._count or self._log_lines):
            return None
        entry = {
            "at": utcnow().isoformat(),
            "method": method,
            "route": template,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "trace_id": trace_id,
            "task_id": scope.get("state", {}).get("task_id"),
        }
        if self._log_lines and access.isEnabledFor(logging.INFO):
            access.info(
                "%s %s %d %.1f ms",
                method,
                template,
                status,
                elapsed * 1000,
                extra={"http": entry, "trace_id": trace_id},
            )
        return entry if self._count else None
