"""`observability.span`: no span under an unsampled parent, whose ids still propagate."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from helpline.common import observability
from helpline.common.observability import follows_parent, span

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331


@pytest.fixture
def recorded() -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # parent-based, like every provider setup_tracing makes
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def under(sampled: bool, monkeypatch: pytest.MonkeyPatch, *, follows: bool = True) -> Context:
    """A remote parent's context; `follows`: the installed sampler follows the parent."""
    monkeypatch.setattr(observability, "_unsampled_stays_unsampled", follows)
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    parent = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=flags))
    return trace.set_span_in_context(parent)


def test_under_an_unsampled_parent_no_span_is_built_and_its_ids_propagate(
    recorded: tuple[trace.Tracer, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracer, exporter = recorded
    context = under(False, monkeypatch)
    headers: dict[str, str] = {}
    with span(tracer, "work process", kind=SpanKind.CONSUMER, context=context):
        current = trace.get_current_span().get_span_context()
        assert (current.trace_id, current.span_id) == (TRACE_ID, SPAN_ID)
        with span(tracer, "events publish", kind=SpanKind.PRODUCER):
            propagate.inject(headers)
    assert trace.get_current_span().get_span_context().is_valid is False  # detached again
    assert headers["traceparent"] == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"
    assert exporter.get_finished_spans() == ()


def test_a_sampled_parent_or_none_gets_a_real_span(
    recorded: tuple[trace.Tracer, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracer, exporter = recorded
    context = under(True, monkeypatch)
    with (
        span(tracer, "work process", kind=SpanKind.CONSUMER, context=context),
        span(tracer, "events publish", kind=SpanKind.PRODUCER, attributes={"a": "b"}),
    ):
        pass
    with span(tracer, "root", kind=SpanKind.INTERNAL):
        pass
    finished = {s.name: s for s in exporter.get_finished_spans()}
    assert set(finished) == {"work process", "events publish", "root"}
    process = finished["work process"]
    assert process.parent is not None
    assert process.parent.span_id == SPAN_ID
    assert finished["events publish"].parent == process.context
    assert finished["events publish"].attributes == {"a": "b"}
    assert finished["root"].parent is None


def test_a_sampler_that_may_sample_below_an_unsampled_parent_keeps_its_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)  # samples whatever the parent says
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    context = under(False, monkeypatch, follows=follows_parent(ALWAYS_ON))
    with span(provider.get_tracer("test"), "work process", kind=SpanKind.CONSUMER, context=context):
        pass
    provider.shutdown()
    [recorded_span] = exporter.get_finished_spans()
    assert recorded_span.name == "work process"
    assert recorded_span.context.trace_id == TRACE_ID


def test_which_samplers_follow_the_parent() -> None:
    assert follows_parent(ALWAYS_OFF)
    assert follows_parent(ParentBased(ALWAYS_ON))
    assert follows_parent(ParentBased(TraceIdRatioBased(0.1)))
    assert not follows_parent(ALWAYS_ON)
    assert not follows_parent(TraceIdRatioBased(0.1))


def test_without_a_provider_no_span_is_built_and_a_callers_context_propagates() -> None:
    """A library caller that installed no tracer provider: spans would be the API's no-op
    ones, so none is built, and the caller's own context still reaches the headers. A
    fresh interpreter, since a provider, once installed, stays."""
    probe = f"""
from opentelemetry import propagate, trace
from helpline.common.observability import span
parent = propagate.extract({{"traceparent": "00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"}})
headers = {{}}
with span(trace.get_tracer("probe"), "x publish", kind=trace.SpanKind.PRODUCER, context=parent):
    propagate.inject(headers)
print(headers.get("traceparent"))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
