"""The embedded default's tracing UI: under the real `helpline up` (the gateway a process of
its own, rag in up's), a question's trace holds both processes' spans, and the gateway's
trace page shows them as a waterfall in a real Chromium."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from helpline.testing import HelplineUp

pytestmark = pytest.mark.slow

ENV = {"HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1", "HELPLINE_LOG_JSON": "false"}
CHROMIUM = "/usr/bin/chromium"


def wait_terminal(client: httpx.Client, task_id: str, timeout_s: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        record = client.get(f"/api/v1/tasks/{task_id}").json()
        if record["status"] in {"succeeded", "failed", "expired", "cancelled"}:
            return record
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} not terminal: {record}")


def whole_trace(client: httpx.Client, trace_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
    """The trace once it has one root and spans of the gateway and rag."""
    deadline = time.monotonic() + timeout_s
    trace: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/api/v1/traces/{trace_id}")
        if response.status_code == 200:
            trace = response.json()
            ids = {s["span_id"] for s in trace["spans"]}
            roots = [s for s in trace["spans"] if s["parent_id"] not in ids]
            if {"gateway", "rag"} <= set(trace["services"]) and len(roots) == 1:
                return trace
        time.sleep(0.1)
    raise AssertionError(f"trace {trace_id} not whole: {trace}")


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="no /usr/bin/chromium")
def test_a_questions_trace_over_two_processes_shows_in_the_trace_page(
    tmp_path: Path, docs_site: str
) -> None:
    with HelplineUp(tmp_path / "data", ENV) as up, up.client() as client:
        scraped = client.post(
            "/api/v1/scrape", json={"url": f"{docs_site}/config/firewall.html", "brand": "acme"}
        )
        assert wait_terminal(client, scraped.json()["task_id"])["status"] == "succeeded"
        response = client.post(
            "/api/v1/query",
            json={"question": "What does error FW-409 mean?", "brand": "acme", "cache": False},
        )
        assert response.status_code == 200, response.text
        trace_id = response.headers["x-trace-id"]
        trace = whole_trace(client, trace_id)
        # Two processes sent their spans: the gateway's own, and up's (where rag runs).
        by_service = {s["service"]: s for s in trace["spans"]}
        assert by_service["gateway"]["process"] == "helpline-gateway"
        assert by_service["rag"]["process"] == "helpline"
        assert by_service["gateway"]["instance"] != by_service["rag"]["instance"]

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 720})
                # The page asks for an API key where the API needs one; a person types it in
                # once a session.
                context.add_init_script(
                    f"sessionStorage.setItem('helpline-api-key', {up.admin_key!r})"
                )
                page = context.new_page()
                page.goto(f"{up.url}/traces/{trace_id}")
                rows = page.locator("#waterfall tbody tr.span")
                rows.first.wait_for(timeout=15_000)
                assert rows.count() == trace["span_count"]
                services = rows.locator("td.service").all_inner_texts()
                assert services[0] == "gateway"
                assert "rag" in services
                names = rows.locator("td.name").all_inner_texts()
                assert names[0] == "POST /api/v1/query"
                assert any(n.endswith(" process") and ".query." in n for n in names)
                assert trace_id in page.locator("h1").inner_text()
                # Every span has a bar, within the timeline.
                for bar in rows.locator(".bar-fill").all():
                    box = bar.bounding_box()
                    assert box is not None
                    assert box["width"] > 0
                # Selecting a span shows its attributes.
                rows.first.click()
                assert "http.route" in page.locator("tr.details").inner_text()
                page.screenshot(path=str(tmp_path / "trace-page.png"), full_page=True)
            finally:
                browser.close()
