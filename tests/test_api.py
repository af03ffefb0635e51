"""The REST contract against the real bus: validation, unknown ids, blocked addresses, listing."""

from __future__ import annotations

import pytest
from conftest import System
from e2e_helpers import wait_terminal

from helpline.common.subjects import Kind
from helpline.gateway.app import GatewayComponent


async def test_unknown_task_is_404(system: System) -> None:
    response = await system.client.get("/api/v1/tasks/0123456789abcdef")
    assert response.status_code == 404
    assert "no task" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/api/v1/crawl",
            {"url": "http://docs.example.com/", "brand": "acme", "max_pages": 0},
            "max_pages",
        ),
        (
            "/api/v1/crawl",
            {"url": "http://docs.example.com/", "brand": "acme", "max_pages": 10001},
            "max_pages",
        ),
        ("/api/v1/crawl", {"url": "ftp://docs.example.com/", "brand": "acme"}, "url"),
        ("/api/v1/crawl", {"url": "http://docs.example.com/"}, "brand"),
        ("/api/v1/scrape", {"url": "not a url", "brand": "acme"}, "url"),
        (
            "/api/v1/scrape",
            {"url": "http://x.example/", "brand": "acme", "priority": "urgent"},
            "priority",
        ),
        ("/api/v1/query", {"question": ""}, "question"),
        ("/api/v1/query", {"question": "x" * 2001}, "question"),
        ("/api/v1/query", {"question": "ok", "top_k": 21}, "top_k"),
        ("/api/v1/query", {"question": "ok", "surprise": 1}, "surprise"),
    ],
)
async def test_invalid_body_is_422_naming_the_field(
    system: System, path: str, body: dict, field: str
) -> None:
    response = await system.client.post(path, json=body)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert field in {e["field"] for e in errors}, errors
    assert all(e["message"] for e in errors)
    assert "Traceback" not in response.text


async def test_private_address_is_refused_with_a_clear_reason(
    system: System, docs_site: str
) -> None:
    # The test system allows only 127.0.0.1; 127.0.0.2 is loopback too, and not listed.
    blocked = docs_site.replace("127.0.0.1", "127.0.0.2")
    response = await system.client.post(
        "/api/v1/scrape", json={"url": f"{blocked}/index.html", "brand": "acme"}
    )
    assert response.status_code == 202
    record = await wait_terminal(system.client, response.json()["task_id"])
    assert record["status"] == "failed"
    assert record["error"]["type"] == "BlockedAddress"
    assert "blocked address" in record["error"]["message"]
    assert "127.0.0.2" not in record["error"]["message"]
    assert record["attempts"] == 1  # refused, not retried


async def test_scrape_one_page_and_list_newest_first(system: System, docs_site: str) -> None:
    ids = []
    for page in ("config/wifi.html", "config/firewall.html"):
        response = await system.client.post(
            "/api/v1/scrape", json={"url": f"{docs_site}/{page}", "brand": "acme"}
        )
        assert response.status_code == 202
        ids.append(response.json()["task_id"])
    for task_id in ids:
        record = await wait_terminal(system.client, task_id)
        assert record["status"] == "succeeded", record
        assert record["result"]["chunks_indexed"] >= 1
        assert record["result"]["embedded"] == record["result"]["chunks_indexed"]
    listing = (
        await system.client.get("/api/v1/tasks", params={"kind": "scrape", "status": "succeeded"})
    ).json()
    assert [t["task_id"] for t in listing] == list(reversed(ids))
    assert (await system.client.get("/api/v1/tasks", params={"kind": "crawl"})).json() == []


async def test_rescrape_unchanged_page_embeds_nothing(system: System, docs_site: str) -> None:
    results = []
    for _ in range(2):
        response = await system.client.post(
            "/api/v1/scrape", json={"url": f"{docs_site}/config/wifi.html", "brand": "acme"}
        )
        results.append((await wait_terminal(system.client, response.json()["task_id"]))["result"])
    assert results[0]["embedded"] >= 1
    assert results[1]["embedded"] == 0
    assert results[1]["unchanged"] == results[0]["chunks_indexed"]


async def test_maintenance_ping_completes(system: System) -> None:
    response = await system.client.post("/api/v1/maintenance/ping")
    assert response.status_code == 202
    record = await wait_terminal(system.client, response.json()["task_id"])
    assert record["status"] == "succeeded"
    assert record["result"]["pong"] is True
    assert record["kind"] == "maintenance"


async def test_idempotency_key_returns_the_same_task(system: System) -> None:
    headers = {"Idempotency-Key": "ping-once"}
    first = await system.client.post("/api/v1/maintenance/ping", headers=headers)
    second = await system.client.post("/api/v1/maintenance/ping", headers=headers)
    assert first.json()["task_id"] == second.json()["task_id"]


async def test_probes_and_openapi(system: System) -> None:
    assert (await system.client.get("/healthz")).json() == {"status": "ok"}
    assert (await system.client.get("/readyz")).json() == {"status": "ready"}
    spec = (await system.client.get("/openapi.json")).json()
    assert {"/api/v1/crawl", "/api/v1/scrape", "/api/v1/query", "/api/v1/tasks/{task_id}"} <= set(
        spec["paths"]
    )
    assert (await system.client.get("/docs")).status_code == 200


async def test_the_bus_contract_is_served_for_this_deployment(system: System) -> None:
    served = (await system.client.get("/asyncapi.json")).json()
    prefix = system.host.bus.layout.prefix
    assert served["asyncapi"].startswith("3.")
    # The addresses this deployment really uses, not the default prefix's.
    assert served["channels"]["tasks_query"]["address"] == f"{prefix}.tasks.query.{{priority}}"
    assert served["channels"]["events_scrape"]["address"] == system.host.bus.layout.event_subject(
        Kind.SCRAPE
    )
    assert "QueryTask" in served["components"]["messages"]


async def test_embed_free_text_documents_then_answer_from_them(system: System) -> None:
    documents = [
        {
            "id": "faq-refund",
            "title": "Refunds",
            "text": "Customers can request a refund within 30 days of purchase.\n\nRefunds reach the original card in five business days.",
            "brand": "acme",
        },
        {
            "id": "faq-shipping",
            "title": "Shipping",
            "text": "Orders ship from Rotterdam every weekday.",
            "brand": "acme",
        },
    ]
    response = await system.client.post("/api/v1/embed", json={"documents": documents})
    assert response.status_code == 202, response.text
    parent = await wait_terminal(system.client, response.json()["task_id"])
    assert parent["status"] == "succeeded", parent
    assert parent["kind"] == "embed"
    assert parent["priority"] == "low"
    assert parent["progress"] == {"done": 2, "total": 2}
    answer = (
        await system.client.post(
            "/api/v1/query",
            json={"question": "How long do I have to ask for my money back?", "brand": "acme"},
        )
    ).json()
    assert answer["sources"][0]["url"] == "doc://acme/faq-refund"
    assert answer["sources"][0]["title"] == "Refunds"
    assert "30 days" in answer["answer"]


async def test_embed_rejects_empty_text_naming_the_document(system: System) -> None:
    response = await system.client.post(
        "/api/v1/embed", json={"documents": [{"text": " ", "brand": "acme"}]}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "documents.0.text"


async def test_a_read_the_bus_does_not_answer_is_503_not_a_stack_trace(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = next(c for c in system.host.components if isinstance(c, GatewayComponent))
    tasks = gateway.app.state.tasks

    async def silent(**_kwargs: object) -> list[object]:
        raise TimeoutError("$KV_tasks: 12 entries of '>' never came")

    monkeypatch.setattr(tasks.store, "scan", silent)
    response = await system.client.get("/api/v1/tasks")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "the bus did not answer in time; try again later"}
