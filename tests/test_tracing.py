"""One trace from the HTTP request, over the bus, through the services and back; one crawl,
one trace tree."""

from __future__ import annotations

from collections.abc import Sequence

import test_llm_answers
from answer_helpers import ask
from conftest import System
from e2e_helpers import eventually, wait_terminal
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from test_llm_answers import QUESTION, ChatServer

from helpline.common.messages import derived_id

# The generated answers' system of those tests: a chat server on 127.0.0.1, one page indexed.
chat_server = test_llm_answers.chat_server
system_with_llm = test_llm_answers.system_with_llm


def in_trace(spans: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]


def http_span(spans: InMemorySpanExporter, route: str) -> ReadableSpan:
    found = [
        s
        for s in spans.get_finished_spans()
        if s.attributes and s.attributes.get("http.route") == route
    ]
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


def orphans(trace: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    """Spans whose parent is not in the trace (the root is one)."""
    ids = {s.context.span_id for s in trace}
    return [s for s in trace if s.parent is None or s.parent.span_id not in ids]


def attribute(span: ReadableSpan, name: str) -> object:
    return (span.attributes or {}).get(name)


def number(span: ReadableSpan, name: str) -> int:
    value = attribute(span, name)
    assert isinstance(value, int), f"{span.name}: {name}={value!r}"
    return value


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, span.name
    return span.parent.span_id


def children(trace: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in trace if s.parent is not None and s.parent.span_id == parent.context.span_id]


def forbidden_in_attributes(trace: Sequence[ReadableSpan], *texts: str) -> list[str]:
    """Attributes (of spans and their events) holding any of `texts`."""
    found = []
    for s in trace:
        values = [*(s.attributes or {}).items()]
        for event in s.events:
            values.extend((event.attributes or {}).items())
        for name, value in values:
            if any(text in str(value) for text in texts):
                found.append(f"{s.name}: {name}={value}")
    return found


async def test_query_is_one_trace_across_http_and_nats(
    spans: InMemorySpanExporter, system: System, docs_site: str
) -> None:
    response = await system.client.post(
        "/api/v1/scrape", json={"url": f"{docs_site}/config/firewall.html", "brand": "acme"}
    )
    assert response.status_code == 202, response.text
    await wait_terminal(system.client, response.json()["task_id"])
    spans.clear()
    question = "What is FW-409?"
    response = await system.client.post(
        "/api/v1/query", json={"question": question, "brand": "acme"}
    )
    assert response.status_code == 200
    task_id = response.json()["task_id"]
    # Rag's consume span closes after it has replied (it still emits and acks): wait for it.
    query_subject = system.host.bus.layout.task_subject("query", "critical")  # type: ignore[arg-type]

    def rag_span() -> list[ReadableSpan]:
        return [
            s
            for s in spans.get_finished_spans()
            if s.name == f"{query_subject} process" and attribute(s, "helpline.task.id") == task_id
        ]

    async def finished() -> bool:
        return bool(rag_span())

    assert await eventually(finished, 5.0, every_s=0.02)
    http = http_span(spans, "/api/v1/query")
    trace = in_trace(spans, http.context.trace_id)
    names = {s.name for s in trace}
    # The gateway's publish and rag's processing of the query share the HTTP request's trace.
    assert any(query_subject in n and "publish" in n for n in names), names
    (process,) = rag_span()
    assert process.context.trace_id == http.context.trace_id
    assert attribute(process, "helpline.task.outcome") == "succeeded"
    # So does the answer's trip back to the gateway's inbox.
    assert any("replies" in n and "publish" in n for n in names), names
    # Inside rag: the question embedded, the index searched (its rankings fused), the
    # answer composed, then cached; the gateway looked in the cache first.
    by_name = {s.name: s for s in trace}
    assert {"embed question", "compose answer", "answer cache put", "answer cache get"} <= names
    (search,) = [s for s in trace if attribute(s, "db.operation.name") == "search"]
    assert search.name == f"search {attribute(search, 'db.collection.name')}"
    assert attribute(search, "db.system.name") == "qdrant"
    assert attribute(search, "helpline.search.hybrid") is True
    assert number(search, "db.response.returned_rows") > 0
    fusion = by_name["rank fusion"]
    assert parent_of(fusion) == search.context.span_id
    for name in ("embed question", "compose answer", "answer cache put"):
        assert parent_of(by_name[name]) == process.context.span_id, name
    assert parent_of(search) == process.context.span_id
    assert attribute(by_name["compose answer"], "helpline.answer.sources") == len(
        response.json()["sources"]
    )
    assert attribute(by_name["answer cache get"], "helpline.cache.hit") is False
    assert parent_of(by_name["answer cache get"]) == http.context.span_id
    assert [s.name for s in orphans(trace)] == [http.name]
    # The question itself is in no span.
    assert not forbidden_in_attributes(trace, question, "FW-409")


async def test_crawl_is_one_trace_tree(
    spans: InMemorySpanExporter, system: System, docs_site: str
) -> None:
    spans.clear()
    response = await system.client.post(
        "/api/v1/crawl",
        # Depth 2: the start page's links publish pages of their own (its grandchildren).
        json={"url": f"{docs_site}/index.html?from=tracing", "brand": "acme", "max_depth": 2},
    )
    assert response.status_code == 202, response.text
    crawl_id = response.json()["task_id"]
    record = await wait_terminal(system.client, crawl_id, timeout_s=90)
    assert record["status"] == "succeeded", record
    listed = await system.client.get("/api/v1/tasks", params={"limit": 1000})
    pages = [t for t in listed.json() if t.get("parent_id") == crawl_id]
    succeeded = {t["task_id"] for t in pages if t["status"] == "succeeded"}
    assert len(pages) >= 10, pages
    assert len(succeeded) >= 8, pages
    root = http_span(spans, "/api/v1/crawl")
    trace_id = root.context.trace_id

    def processed(kind: str) -> dict[str, ReadableSpan]:
        """The last process span of each task of `kind`, in any trace."""
        out: dict[str, ReadableSpan] = {}
        for s in spans.get_finished_spans():
            if s.name.endswith(" process") and attribute(s, "helpline.task.kind") == kind:
                out[str(attribute(s, "helpline.task.id"))] = s
        return out

    async def settled() -> bool:
        # A parent is done once its last page's event is applied, which can be before that
        # page's embed span has closed: wait until the trace has no loose ends.
        embedded = {attribute(s, "helpline.task.reported_as") for s in processed("embed").values()}
        return succeeded <= embedded and len(orphans(in_trace(spans, trace_id))) == 1

    assert await eventually(settled, 10.0, every_s=0.05)
    trace = in_trace(spans, trace_id)
    # A tree: every span's parent is in the trace, but the request that started the crawl.
    assert [s.name for s in orphans(trace)] == [root.name]
    # Every page scrape and every embed of the crawl is in it, in every attempt.
    crawl_spans = processed("crawl")
    assert crawl_spans[crawl_id].context.trace_id == trace_id
    scrapes = processed("scrape")
    page_ids = {t["task_id"] for t in pages}
    assert page_ids <= set(scrapes)
    for page in page_ids:
        assert scrapes[page].context.trace_id == trace_id, page
    embeds = processed("embed")
    for page in succeeded:
        embed = embeds[derived_id(page, "embed")]
        assert embed.context.trace_id == trace_id, page
        assert attribute(embed, "helpline.task.reported_as") == page
    # A page's time, step by step: each a child of its task's span.
    names = {s.name for s in trace}
    assert {"fetch", "extract", "chunk", "follow links", "embed"} <= names, names
    scrape_span_ids = {s.context.span_id for s in scrapes.values()}
    embed_span_ids = {s.context.span_id for s in embeds.values()}
    for s in trace:
        if s.name in ("extract", "chunk", "follow links"):
            assert parent_of(s) in scrape_span_ids, s.name
        if s.name == "embed" or attribute(s, "db.operation.name") == "upsert":
            assert parent_of(s) in embed_span_ids, s.name
    upserts = [s for s in trace if attribute(s, "db.operation.name") == "upsert"]
    assert upserts
    assert all(number(s, "helpline.points") > 0 for s in upserts)
    fetches = [s for s in trace if s.name == "fetch"]
    statuses = {attribute(s, "http.response.status_code") for s in fetches}
    assert {200, 404} <= statuses, statuses
    for fetch in fetches:
        assert attribute(fetch, "server.address") == "127.0.0.1"
        assert attribute(fetch, "http.request.method") == "GET"
        assert str(attribute(fetch, "url.full")).startswith(docs_site)
    ok = [s for s in fetches if attribute(s, "http.response.status_code") == 200]
    assert all(number(s, "helpline.fetch.body_bytes") > 0 for s in ok)
    # A missing page fails its fetch (robots.txt and sitemap.xml are missing too, and fine).
    (missing,) = [s for s in fetches if str(attribute(s, "url.full")).endswith("missing-page.html")]
    assert attribute(missing, "http.response.status_code") == 404
    assert attribute(missing, "error.type") == "PageGone"
    assert missing.status.status_code is StatusCode.ERROR
    assert sum(number(s, "helpline.chunks") for s in trace if s.name == "chunk") > 0
    embedded = [s for s in trace if s.name == "embed"]
    assert all(number(s, "helpline.embed.texts") > 0 for s in embedded)
    # No query string in any span: not the start page's, not in an error's message.
    assert not forbidden_in_attributes(trace, "from=tracing"), "query string in a span"


async def test_generated_answer_traces_the_model_call_without_the_question(
    spans: InMemorySpanExporter, system_with_llm: System, chat_server: ChatServer
) -> None:
    spans.clear()
    answer = await ask(system_with_llm, QUESTION, "acme")
    assert answer["answer_mode"] == "llm"
    process_name = f"{system_with_llm.host.bus.layout.task_subject('query', 'critical')} process"  # type: ignore[arg-type]

    async def finished() -> bool:
        return any(
            s.name == process_name and attribute(s, "helpline.task.id") == answer["task_id"]
            for s in spans.get_finished_spans()
        )

    assert await eventually(finished, 5.0, every_s=0.02)
    trace = in_trace(spans, http_span(spans, "/api/v1/query").context.trace_id)
    (process,) = [s for s in trace if s.name == process_name]
    (chat,) = [s for s in trace if attribute(s, "gen_ai.operation.name") == "chat"]
    assert chat.name == "chat test-model"
    assert parent_of(chat) == process.context.span_id
    assert attribute(chat, "gen_ai.request.model") == "test-model"
    assert attribute(chat, "gen_ai.response.model") == "test-model"
    assert attribute(chat, "server.address") == "127.0.0.1"
    assert number(chat, "helpline.llm.passages") == 1
    assert chat.status.status_code is not StatusCode.ERROR
    # Neither the question, the passages sent nor the key are in the trace.
    assert not forbidden_in_attributes(trace, QUESTION, "X200", "test-key", "two years")
