"""The web console in a real Chromium against the real `helpline up` and a local site: sign
in, crawl and watch the progress reach done, ask and follow a source, cancel a task, replay a
dead letter, make and revoke a key; a query-only key is offered the Ask panel alone.

Each panel's screenshot is kept in the test's tmp dir (Ask and Tasks copied to docs/console
when HELPLINE_CONSOLE_SCREENSHOTS names a folder)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from helpline.gateway.app import create_app
from helpline.gateway.settings import GatewaySettings
from helpline.testing import HelplineUp, serve_site, slow_route

SITE = Path(__file__).parent / "site"
CHROMIUM = "/usr/bin/chromium"
ENV = {
    "HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1",
    "HELPLINE_LOG_JSON": "false",
    # A page slower than the fetch timeout is dead-lettered after two tries, quickly.
    "HELPLINE_SCRAPER_TIMEOUT_S": "1",
    "HELPLINE_MAX_DELIVER": "2",
    "HELPLINE_BACKOFF_BASE_S": "0.2",
}
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with serve_site(SITE, routes={"/troubleshooting/slow.html": slow_route(3.0)}) as url:
        yield url


def sign_in(page: Page, url: str, key: str) -> None:
    page.goto(url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def nav(page: Page, name: str) -> Locator:
    return page.get_by_role("navigation", name="Panels").get_by_role("link", name=name, exact=True)


def shot(page: Page, out: Path, name: str) -> None:
    page.screenshot(path=str(out / f"console-{name}.png"), full_page=True)


def submitted_task(page: Page, form: str) -> str:
    link = page.locator(f"#{form} .result a")
    expect(link).to_be_visible(timeout=WAIT_MS)
    return link.inner_text()


async def test_the_console_files_are_served_without_a_key() -> None:
    """Only the shipped files, by name, with their types; the API still wants a key."""
    app = create_app(GatewaySettings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        for path in ("/", "/console/"):
            page = await client.get(path)
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert '<script type="module" src="/console/app.js">' in page.text
        script = await client.get("/console/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        # Every module the page imports is served.
        modules = re.findall(r'from "\./([\w.]+)"', script.text)
        assert len(modules) >= 5, modules
        for name in modules:
            assert (await client.get(f"/console/{name}")).status_code == 200, name
        assert (await client.get("/console")).headers["location"] == "/console/"
        for missing in ("/console/nope.js", "/console/..%2Fapp.py", "/console/..%2F..%2Fapp.py"):
            response = await client.get(missing)
            assert response.status_code == 404, missing
            assert "detail" in response.json()
        assert (await client.get("/api/v1/tasks")).status_code in (401, 503)


@pytest.mark.slow
@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="no /usr/bin/chromium")
def test_the_console_in_chromium(tmp_path: Path, site: str) -> None:
    out = tmp_path / "screenshots"
    out.mkdir()
    with HelplineUp(tmp_path / "data", ENV) as up, up.client() as client, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            loaded: list[str] = []
            page.on("response", lambda r: loaded.append(r.url))
            sign_in(page, up.url, up.admin_key)
            tabs = page.get_by_role("navigation", name="Panels").get_by_role("link")
            assert tabs.all_inner_texts() == [
                "Ask",
                "Tasks",
                "Crawl",
                "Sources",
                "Documents",
                "Operations",
                "Keys",
            ]
            # Nothing from anywhere but the gateway.
            assert all(u.startswith(up.url) for u in loaded), loaded
            weight = page.evaluate(
                "performance.getEntriesByType('navigation').concat("
                "performance.getEntriesByType('resource').filter(e => !e.name.includes('/api/')))"
                ".reduce((n, e) => n + e.transferSize, 0)"
            )
            figures = {"first_load_kb": round(weight / 1024, 1)}
            page.evaluate("window.__sameDocument = true")

            # A bad input: the API's detail, shown where the form is.
            nav(page, "Crawl").click()
            scrape = page.locator("#scrape-form")
            scrape.get_by_label("Page URL").fill(f"{site}/privacy.html")
            scrape.get_by_label("Brand").fill("no spaces allowed")
            scrape.get_by_role("button", name="Scrape").click()
            expect(scrape.locator(".result.error")).to_contain_text("brand", timeout=WAIT_MS)

            # Crawl the site and watch it, without a reload, until done.
            crawl = page.locator("#crawl-form")
            crawl.get_by_label("Start URL").fill(f"{site}/index.html")
            crawl.get_by_label("Brand").fill("acme")
            crawl.get_by_label("Max pages").fill("12")
            crawl.get_by_role("button", name="Start crawl").click()
            crawl_id = submitted_task(page, "crawl-form")
            shot(page, out, "crawl")
            page.locator("#crawl-form .result a").click()
            row = page.locator(f"#task-list tr[data-task='{crawl_id}']")
            expect(row).to_be_visible()
            expect(page.locator("#task-detail")).to_have_attribute(
                "data-status", re.compile("succeeded|failed"), timeout=WAIT_MS
            )
            expect(row).to_have_attribute("data-status", "succeeded", timeout=WAIT_MS)
            bar = row.locator("progress")
            assert bar.get_attribute("value") == bar.get_attribute("max"), row.inner_text()
            assert int(bar.get_attribute("max") or 0) > 1
            # Its children, the slow page's failure among them with its reason.
            expect(page.locator("#task-detail")).to_contain_text("Children")
            assert page.evaluate("window.__sameDocument") is True

            # Cancel: a batch that waits a minute between its pages.
            nav(page, "Crawl").click()
            batch = page.locator("#batch-form")
            urls = "\n".join(f"{site}/{p}" for p in ("terms.html", "privacy.html", "index.html"))
            batch.get_by_label("URLs, one a line").fill(urls)
            batch.get_by_label("Brand").fill("acme")
            batch.get_by_label("At once").fill("1")
            batch.get_by_label("Delay (ms)").fill("60000")
            batch.get_by_role("button", name="Scrape batch").click()
            batch_id = submitted_task(page, "batch-form")
            # A text embedded from the form is a task that succeeds.
            embed = page.locator("#embed-form")
            embed.get_by_label("Title").fill("Night mode")
            embed.get_by_label("Brand").fill("acme")
            embed.get_by_label("Text").fill("Night mode dims every light on the X200 after 22:00.")
            embed.get_by_role("button", name="Embed").click()
            embed_id = submitted_task(page, "embed-form")
            page.goto(f"{up.url}/#tasks/{batch_id}")
            page.locator("#task-detail").get_by_role("button", name="Cancel").click()
            expect(page.locator(f"#task-list tr[data-task='{batch_id}']")).to_have_attribute(
                "data-status", "cancelled", timeout=WAIT_MS
            )
            page.get_by_label("Kind").select_option("crawl")
            expect(page.locator("#task-list tbody tr")).to_have_count(1)
            page.get_by_label("Kind").select_option("")
            page.locator(f"#task-list tr[data-task='{crawl_id}'] a").click()
            expect(page.locator("#task-detail")).to_contain_text(crawl_id)
            expect(page.locator("#task-detail")).to_contain_text("timed out fetching")
            shot(page, out, "tasks")

            # Ask: the answer streams in; [n] goes to source n, whose link is the page.
            nav(page, "Ask").click()
            page.locator("#ask-form").get_by_label("Brand").fill("acme")
            page.get_by_label("Question").fill("What does error FW-409 mean?")
            page.get_by_role("button", name="Ask").click()
            answer = page.locator("#answer")
            expect(answer).to_have_attribute("data-state", "done", timeout=WAIT_MS)
            figures["first_token_ms"] = float(answer.get_attribute("data-first-token-ms") or "nan")
            assert page.locator("#answer-text").inner_text().strip()
            sources = page.locator("#answer-sources li")
            assert sources.count() >= 1
            cites = page.locator("#answer-text a.cite")
            if cites.count():
                cites.first.click()
                n = cites.first.inner_text().strip("[]")
                expect(page.locator(f"#source-{n}")).to_be_focused()
            href = sources.first.locator("a.source-link").get_attribute("href") or ""
            assert href.startswith(site), href
            assert httpx.get(href).status_code == 200
            expect(page.locator("#answer-meta")).to_contain_text(" ms")
            shot(page, out, "ask")
            # The same again, asked from the keyboard, comes from the cache and says so.
            page.get_by_label("Question").press("Enter")
            expect(page.locator("#answer-meta")).to_contain_text("cached", timeout=WAIT_MS)

            # Operations: the slow page's dead letter, replayed.
            expect.set_options(timeout=WAIT_MS)
            nav(page, "Operations").click()
            expect(page.locator("#ops-queues")).to_contain_text("queues empty")
            replay = page.locator("#ops-dlq button.replay").first
            expect(replay).to_be_visible()
            dead = replay.get_attribute("data-task")
            shot(page, out, "operations")
            replay.click()
            # The replay is a new task, shown in its detail.
            expect(page).to_have_url(re.compile(r"#tasks/[0-9a-f]+$"))
            replayed = page.url.rsplit("/", 1)[1]
            assert replayed != dead
            expect(page.locator("#task-detail")).to_contain_text(replayed)
            assert client.get(f"/api/v1/tasks/{replayed}").json()["kind"] == "scrape"

            # Sources: one added from its form, listed with its schedule, its documents.
            nav(page, "Sources").click()
            form = page.locator("#source-form")
            form.get_by_label("Start URL").fill(f"{site}/index.html")
            form.get_by_label("Brand").fill("acme")
            form.get_by_role("button", name="Add source").click()
            expect(form.locator(".result")).to_contain_text("first crawl starts")
            source = page.locator("#source-list tbody tr")
            expect(source).to_have_count(1)
            expect(source).to_contain_text("1 d")
            # The schedule starts its first crawl on its own; the row, polled, shows it end.
            expect(source.locator("a.status")).to_have_text("succeeded", timeout=WAIT_MS)
            shot(page, out, "sources")
            source.get_by_role("link", name="Documents").click()
            documents = page.locator("#document-list tbody tr")
            expect(documents.first).to_be_visible()
            assert documents.count() > 1
            documents.first.locator("td:first-child a").click()
            detail = page.locator("#document-detail")
            expect(detail.locator("#document-markdown")).not_to_be_empty()
            for step in ("fetched", "extracted", "chunked", "embedded", "indexed"):
                expect(detail.locator("#document-lineage")).to_contain_text(step)
            shot(page, out, "documents")
            # Taken out of the index from its detail: gone from the list.
            doc_id = page.url.rsplit("/", 1)[1]
            page.once("dialog", lambda dialog: dialog.accept())
            detail.get_by_role("button", name="Remove from index").click()
            expect(detail.locator(".result")).to_contain_text("Remove", timeout=WAIT_MS)
            expect(page.locator(f"#document-list tr[data-document='{doc_id}']")).to_have_count(0)
            assert client.get(f"/api/v1/documents/{doc_id}").status_code == 404
            # The source deleted, its pages kept.
            nav(page, "Sources").click()
            page.get_by_label("keep a deleted source's pages in the index").check()
            page.once("dialog", lambda dialog: dialog.accept())
            source.get_by_role("button", name="Delete").click()
            expect(page.locator("#source-note")).to_contain_text("Deleted")
            expect(source).to_have_count(0)
            assert client.get("/api/v1/documents?brand=acme").json()["items"]

            # Keys: made (shown once), listed, revoked.
            nav(page, "Keys").click()
            form = page.locator("#key-form")
            form.get_by_label("Name").fill("agent desk")
            form.get_by_role("button", name="Create key").click()
            made = page.locator("#new-key")
            expect(made).to_be_visible()
            agent_key = made.inner_text()
            row = page.locator("#key-list tr", has_text="agent desk")
            expect(row).to_be_visible()
            shot(page, out, "keys")
            key_id = row.get_attribute("data-key")

            # That query-only key is offered Ask alone, at a phone's width.
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            # A wrong key: the API's reason, and the sign-in form again.
            phone.goto(up.url + "/")
            phone.get_by_label("API key").fill("hl_" + "x" * 43)
            phone.get_by_role("button", name="Sign in").click()
            expect(phone.get_by_role("alert")).to_contain_text("not valid")
            expect(phone.get_by_label("API key")).to_be_visible()
            sign_in(phone, up.url, agent_key)
            ptabs = phone.get_by_role("navigation", name="Panels").get_by_role("link")
            # Documents are readable with the query scope; nothing else is offered.
            expect(ptabs.filter(visible=True)).to_have_count(2)
            assert ptabs.filter(visible=True).all_inner_texts() == ["Ask", "Documents"]
            phone.goto(f"{up.url}/#ops")
            expect(phone.get_by_label("Question")).to_be_visible()
            shot(phone, out, "ask-phone")
            phone.close()

            page.once("dialog", lambda dialog: dialog.accept())
            row.get_by_role("button", name="Revoke").click()
            expect(page.locator(f"#key-list tr[data-key='{key_id}']")).to_have_count(0)
            revoked = httpx.post(
                f"{up.url}/api/v1/query",
                json={"question": "x"},
                headers={"Authorization": f"Bearer {agent_key}"},
            )
            assert revoked.status_code == 401
            assert client.get(f"/api/v1/tasks/{embed_id}").json()["status"] == "succeeded"
        finally:
            browser.close()
    (out / "figures.json").write_text(json.dumps(figures))
    keep = os.environ.get("HELPLINE_CONSOLE_SCREENSHOTS")
    if keep:
        for name in ("ask", "tasks", "sources", "documents"):
            shutil.copy(out / f"console-{name}.png", Path(keep) / f"console-{name}.png")
