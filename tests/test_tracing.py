"""One trace from the HTTP request, over the bus, through rag and back."""

from __future__ import annotations

import asyncio

from conftest import System
from e2e_helpers import wait_terminal
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


async def test_query_is_one_trace_across_http_and_nats(
    spans: InMemorySpanExporter, system: System, docs_site: str
) -> None:
    response = await system.client.post(
        "/api/v1/scrape", json={"url": f"{docs_site}/config/firewall.html", "brand": "acme"}
    )
    await wait_terminal(system.client, response.json()["task_id"])
    spans.clear()
    response = await system.client.post(
        "/api/v1/query", json={"question": "What is FW-409?", "brand": "acme"}
    )
    assert response.status_code == 200
    # Rag's consume span closes after it has replied (it still emits and acks): wait for it.
    query_subject = system.host.bus.layout.task_subject("query", "critical")  # type: ignore[arg-type]
    for _ in range(100):
        finished = spans.get_finished_spans()
        if any(query_subject in s.name and "process" in s.name for s in finished):
            break
        await asyncio.sleep(0.02)
    http = [
        s for s in finished if s.attributes and s.attributes.get("http.route") == "/api/v1/query"
    ]
    assert http, [s.name for s in finished]
    trace_id = http[0].context.trace_id
    in_trace = [s for s in finished if s.context.trace_id == trace_id]
    names = {s.name for s in in_trace}
    # The gateway's publish and rag's processing of the query share the HTTP request's trace.
    assert any(query_subject in n and "publish" in n for n in names), names
    assert any(query_subject in n and "process" in n for n in names), "; ".join(sorted(names))
    # So does the answer's trip back to the gateway's inbox.
    assert any("replies" in n and "publish" in n for n in names), names
