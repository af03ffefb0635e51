"""Tracing and logging set-up, once for every service.

Traces: an OpenTelemetry TracerProvider named after the service; spans are exported
over OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific
variable) is set, kept on the bus for the gateway's trace view when the trace store is on
(`spanstore`), and otherwise only kept for trace ids in logs. Logs: one JSON object
per line carrying the current trace and span id, so a slow request found in the
gateway's views or a log line leads straight to its trace in the tracing UI.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.util.types import Attributes

_configured = False
#: Whether a span under an unsampled parent is never recorded (the installed sampler is
#: parent-based, or records nothing): `span` then builds none.
_unsampled_stays_unsampled = False
#: Whether a tracer provider has been installed (it cannot be taken back).
_provider_installed = False


def setup_tracing(
    service_name: str,
    *,
    otlp_endpoint: str | None,
    record: bool = False,
    store: bool = False,
    store_ratio: float = 1.0,
) -> TracerProvider:
    """Install the global tracer provider (idempotent); export over OTLP when configured.

    With `store`, finished spans also go to the bus's trace store (`spanstore`, once a
    `Host` attaches its connection); without an endpoint or the standard sampler, the share
    `store_ratio` of new traces is recorded (parent-based: a trace is whole or absent).
    With nowhere to send spans (no endpoint, no store, `record` false) they are not
    recorded: every span still gets its trace and span ids, which propagate in message
    headers and appear in logs, but nothing is built up per span only to be thrown away (a
    query crosses a dozen spans). `record` keeps them anyway (for an in-process exporter, or when the
    standard OTEL_TRACES_SAMPLER is set: the SDK's sampler then reads it).
    """
    global _configured
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        return current
    resource = Resource.create({"service.name": service_name})
    if otlp_endpoint or record:
        provider = TracerProvider(resource=resource)
    elif store:
        root = ALWAYS_ON if store_ratio >= 1 else TraceIdRatioBased(store_ratio)
        provider = TracerProvider(resource=resource, sampler=ParentBased(root))
    else:
        provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if store:
        from helpline.common import spanstore

        spanstore.install(provider)
    trace.set_tracer_provider(provider)
    global _unsampled_stays_unsampled
    _unsampled_stays_unsampled = follows_parent(provider.sampler)
    _configured = True
    return provider


def follows_parent(sampler: Sampler) -> bool:
    """Whether `sampler` never samples a span whose parent is not sampled."""
    drops_all = sampler.get_description() == ALWAYS_OFF.get_description()
    return drops_all or isinstance(sampler, ParentBased)


def _no_op(tracer: trace.Tracer) -> bool:
    """Whether every span of `tracer` is the API's no-op one: a no-op tracer, or one from
    the global provider while none is installed (a library caller that traces nothing)."""
    global _provider_installed
    if isinstance(tracer, trace.NoOpTracer):
        return True
    if _provider_installed or not isinstance(tracer, trace.ProxyTracer):
        return False
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return True
    _provider_installed = True
    return False


@contextmanager
def span(
    tracer: trace.Tracer,
    name: str,
    *,
    kind: trace.SpanKind,
    context: otel_context.Context | None = None,
    attributes: Attributes = None,
) -> Iterator[None]:
    """`tracer.start_as_current_span`, except under a parent that is not sampled, or where
    no tracer provider is installed.

    There the span would be dropped anyway (the sampler follows the parent) or be the API's
    no-op, so none is built: the parent (from `context`, else the current one) is made
    current instead, and its trace id still reaches logs and the headers of what is
    published inside. Without an exporter every trace starts unsampled; there a no-op task
    cost the worker 11-16 % less CPU (bench/throughput.py).
    """
    parent = trace.get_current_span(context).get_span_context()
    unsampled = _unsampled_stays_unsampled and parent.is_valid and not parent.trace_flags.sampled
    if not unsampled and not _no_op(tracer):
        with tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes):
            yield
        return
    if context is None:
        yield
        return
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def current_trace_id() -> str | None:
    """The active trace id as 32 hex digits, or None outside a span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


#: Fields a log call may add with `extra=` that a JSON line carries (the access log's `http`).
_EXTRA_FIELDS = ("http", "task_id", "trace_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        for field in _EXTRA_FIELDS:  # what a log call passed in `extra=` for machines to read
            value = record.__dict__.get(field)
            if value is not None:
                entry.setdefault(field, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Root logging to stderr, JSON lines by default."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "trafilatura", "htmldate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
