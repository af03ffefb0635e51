"""Listing a big batch's children a page at a time: `GET /api/v1/tasks?parent=&cursor=`,
against a real gateway, scraper and bus, with pages from a real local site."""

from __future__ import annotations

from typing import Any

import httpx
from conftest import System
from e2e_helpers import wait_terminal

from helpline.testing import bearer

PAGES = ["index.html", "privacy.html", "terms.html", "config/wifi.html", "config/firewall.html"]
MISSING = [f"gone-{i}.html" for i in range(4)]


async def all_pages(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    """Every record the listing gives, following its Link header; and how many pages."""
    records: list[dict[str, Any]] = []
    response = await client.get("/api/v1/tasks", params=params)
    pages = 1
    while True:
        assert response.status_code == 200, response.text
        records += response.json()
        following = response.headers.get("link")
        if following is None:
            assert "x-next-cursor" not in response.headers
            return records, pages
        assert following.endswith('>; rel="next"'), following
        assert response.headers["x-next-cursor"] in following or "cursor=" in following
        response = await client.get(following[1 : following.index(">")])
        pages += 1


async def test_a_batchs_children_are_listed_a_page_at_a_time(
    system: System, docs_site: str
) -> None:
    client = system.client
    urls = [f"{docs_site}/{p}" for p in PAGES + MISSING]
    accepted = await client.post("/api/v1/scrape/batch", json={"urls": urls, "brand": "acme"})
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["task_id"]
    batch = await wait_terminal(client, batch_id, timeout_s=60)
    assert batch["result"]["pages_failed"] == len(MISSING)
    # The parent's record counts its children by status.
    assert batch["result"]["children"] == {
        "succeeded": len(PAGES),
        "failed": len(MISSING),
        "expired": 0,
        "cancelled": 0,
        "unfinished": 0,
    }
    # Another task, not the batch's: never in its listing.
    other = await client.post("/api/v1/scrape", json={"url": urls[0], "brand": "acme"})
    await wait_terminal(client, other.json()["task_id"], timeout_s=60)

    children, pages = await all_pages(client, {"parent": batch_id, "limit": 3})
    assert pages == 3  # 9 children, 3 a page
    assert len(children) == len(urls)
    assert len({c["task_id"] for c in children}) == len(urls)  # none twice across pages
    assert all(c["parent_id"] == batch_id for c in children)
    created = [c["created_at"] for c in children]
    assert created == sorted(created, reverse=True)  # newest first, across pages

    failed, _ = await all_pages(client, {"parent": batch_id, "status": "failed", "limit": 2})
    assert len(failed) == len(MISSING)
    assert all(f["error"]["message"] for f in failed)  # each with its reason

    # A limit that holds them all: one page, no cursor.
    whole, pages = await all_pages(client, {"parent": batch_id, "limit": 100})
    assert pages == 1
    assert [c["task_id"] for c in whole] == [c["task_id"] for c in children]

    # Without a parent, every task pages the same way; the batch and the lone scrape in it.
    everything, _ = await all_pages(client, {"limit": 4})
    ids = [t["task_id"] for t in everything]
    assert len(ids) == len(set(ids)) == len(urls) + 2

    # Any text is a place in the order: no error, and nothing sorts after "~".
    assert (await client.get("/api/v1/tasks", params={"cursor": "~"})).json() != []
    assert (await client.get("/api/v1/tasks", params={"cursor": "0"})).json() == []

    # An unknown parent, or another brand's, is not found.
    unknown = await client.get("/api/v1/tasks", params={"parent": "f" * 32})
    assert unknown.status_code == 404
    made = await client.post(
        "/api/v1/keys", json={"name": "globex desk", "scopes": ["submit"], "brands": ["globex"]}
    )
    globex = bearer(made.json()["key"])
    hidden = await client.get("/api/v1/tasks", params={"parent": batch_id}, headers=globex)
    assert hidden.status_code == 404
    # Word for word what an unknown id gets: whether it exists is not this key's to know.
    assert hidden.json()["detail"] == unknown.json()["detail"].replace("f" * 32, batch_id)
