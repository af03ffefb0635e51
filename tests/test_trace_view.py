"""The trace store and the gateway's trace view: a query's trace, every process's spans,
read back by its id; links to it from the slow-request view."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import System, start_system, stop_system
from e2e_helpers import eventually, wait_terminal
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from helpline.cli.natsserver import NatsServer
from helpline.common import spanstore
from helpline.common.bus import Bus
from helpline.common.embedding import Embedder
from helpline.common.observability import setup_tracing


@pytest.fixture
def trace_store() -> Iterator[spanstore.SpanStore]:
    """This process's spans go to the trace store of the system the test starts (as with
    HELPLINE_TRACE_STORE on); after the test, no longer."""
    provider = setup_tracing("helpline-tests", otlp_endpoint=None, record=True)
    store = spanstore.install(provider)
    yield store
    store.shutdown()


async def read_trace(
    client: httpx.AsyncClient, trace_id: str, services: set[str]
) -> dict[str, Any]:
    """The trace once it is whole (one root) with spans of each of `services` (a process
    sends its spans a moment after they end)."""
    found: dict[str, Any] = {}

    async def complete() -> bool:
        nonlocal found
        response = await client.get(f"/api/v1/traces/{trace_id}")
        if response.status_code == 200:
            found = response.json()
        ids = {s["span_id"] for s in found.get("spans", [])}
        roots = [s for s in found.get("spans", []) if s["parent_id"] not in ids]
        return services <= set(found.get("services", [])) and len(roots) == 1

    assert await eventually(complete, 10.0, every_s=0.1), found
    return found


async def test_a_query_trace_reads_back_with_the_gateway_and_rag_spans(
    trace_store: spanstore.SpanStore, system: System, docs_site: str
) -> None:
    scraped = await system.client.post(
        "/api/v1/scrape", json={"url": f"{docs_site}/config/firewall.html", "brand": "acme"}
    )
    await wait_terminal(system.client, scraped.json()["task_id"])
    response = await system.client.post(
        "/api/v1/query", json={"question": "What is FW-409?", "brand": "acme", "cache": False}
    )
    assert response.status_code == 200, response.text
    trace_id = response.headers["x-trace-id"]

    trace = await read_trace(system.client, trace_id, {"gateway", "rag"})
    assert trace["trace_id"] == trace_id
    spans = trace["spans"]
    assert trace["span_count"] == len(spans)
    for span in spans:
        assert set(span) >= {
            "span_id",
            "parent_id",
            "name",
            "service",
            "start",
            "offset_ms",
            "duration_ms",
            "attributes",
            "status",
        }
        assert span["duration_ms"] >= 0
        assert 0 <= span["offset_ms"] <= trace["duration_ms"]
    # The root is the HTTP request at the gateway; every other span hangs under it.
    root = spans[0]
    assert root["service"] == "gateway"
    assert root["parent_id"] is None
    assert root["attributes"]["http.route"] == "/api/v1/query"
    assert root["depth"] == 0
    by_id = {s["span_id"]: s for s in spans}
    assert all(s["parent_id"] in by_id for s in spans[1:]), spans
    # Rag's processing of the question is a child of the gateway's publish of it.
    process = next(s for s in spans if s["name"].endswith(" process") and ".query." in s["name"])
    assert process["service"] == "rag"
    publish = by_id[process["parent_id"]]
    assert publish["service"] == "gateway"
    assert publish["name"].endswith(" publish")
    assert publish["attributes"]["messaging.destination.name"] in process["name"]
    # So does the answer's trip back: rag publishes the reply within its processing.
    reply = next(s for s in spans if "replies" in s["name"])
    assert reply["service"] == "rag"
    assert reply["depth"] > process["depth"]

    # The slow-request view links the trace to the gateway's own page (no tracing UI set).
    async def linked() -> bool:
        slow = await system.client.get(
            "/api/v1/metrics/slow-requests", params={"threshold_ms": 0, "limit": 1000}
        )
        return any(e["trace_id"] == trace_id for e in slow.json())

    assert await eventually(linked, 10.0)
    slow = await system.client.get(
        "/api/v1/metrics/slow-requests", params={"threshold_ms": 0, "limit": 1000}
    )
    entry = next(e for e in slow.json() if e["trace_id"] == trace_id)
    assert entry["trace_url"] == f"http://gateway/traces/{trace_id}"
    page = await system.client.get(f"/traces/{trace_id}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "api/v1/traces/" in page.text
    assert "<script src" not in page.text  # self-contained: nothing from elsewhere


async def test_an_unknown_or_malformed_trace_id_is_refused(system: System) -> None:
    missing = await system.client.get(f"/api/v1/traces/{'0' * 31}1")
    assert missing.status_code == 404
    assert "no trace" in missing.json()["detail"]
    bad = await system.client.get("/api/v1/traces/not-a-trace")
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["trace_id"]


async def test_views_link_trace_ids_to_the_tracing_ui_when_one_is_set(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder
) -> None:
    system = await start_system(
        nats_server.url, prefix, tmp_path, model, trace_ui_url="http://jaeger:16686/"
    )
    try:
        response = await system.client.post("/api/v1/maintenance/ping")
        assert response.status_code == 202
        trace_id = response.headers["x-trace-id"]
        found: list[dict[str, Any]] = []

        async def listed() -> bool:
            nonlocal found
            slow = await system.client.get(
                "/api/v1/metrics/slow-requests", params={"threshold_ms": 0}
            )
            found = [e for e in slow.json() if e["trace_id"] == trace_id]
            return bool(found)

        assert await eventually(listed, 10.0)
        assert found[0]["trace_url"] == f"http://jaeger:16686/trace/{trace_id}"
    finally:
        await stop_system(system)


async def test_the_store_keeps_spans_from_the_loop_and_from_threads_by_trace(bus: Bus) -> None:
    """Straight against a real nats-server: spans that end on the event loop and in a worker
    thread alike reach the stream, each trace under its own subject, in tree order."""
    provider = TracerProvider(sampler=ALWAYS_ON)
    store = spanstore.SpanStore()
    provider.add_span_processor(store)
    store.attach(bus.nc, bus.layout.prefix)
    tracer = provider.get_tracer("helpline.rag")

    def in_thread() -> None:
        with tracer.start_as_current_span("in a thread", attributes={"long": "x" * 2000}):
            pass

    try:
        with tracer.start_as_current_span("root") as root:
            await asyncio.to_thread(in_thread)  # the thread runs in a copy of this context
            with tracer.start_as_current_span("on the loop"):
                pass
        with tracer.start_as_current_span("another trace") as other:
            pass
    finally:
        await store.detach(bus.nc)
    trace_id = f"{root.get_span_context().trace_id:032x}"
    stored = await spanstore.read(bus.js, bus.layout.prefix, trace_id)
    assert sorted(s["name"] for s in stored) == ["in a thread", "on the loop", "root"]
    view = spanstore.view(trace_id, stored)
    assert [(s["name"], s["depth"]) for s in view["spans"]] == [
        ("root", 0),
        ("in a thread", 1),
        ("on the loop", 1),
    ]
    assert view["services"] == ["rag"]
    threaded = view["spans"][1]
    assert len(threaded["attributes"]["long"]) == spanstore.MAX_VALUE_CHARS
    other_id = f"{other.get_span_context().trace_id:032x}"
    assert [s["name"] for s in await spanstore.read(bus.js, bus.layout.prefix, other_id)] == [
        "another trace"
    ]
