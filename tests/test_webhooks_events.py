"""Webhook events of pages leaving the index and of sources refreshed (issue 20), against a
real bus, the real services, a site served from a copy (so a page can go) and receivers on
127.0.0.1 whose deliveries `standardwebhooks` verifies (the helpers of test_webhooks)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SITE, start_system, stop_system
from e2e_helpers import wait_terminal
from test_webhooks import Receiver, eventually, receiving, register, verified

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.common.messages import PageState
from helpline.common.pagestate import PageStates
from helpline.common.sources import SourceStore
from helpline.maintenance.sources import sweep
from helpline.testing import serve_site

EVENTS = ["page.removed", "source.refreshed", "page.indexed"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving("127.0.0.1") as got:
        yield got


def of_type(receiver: Receiver, path: str, kind: str) -> list[dict[str, Any]]:
    return [p for r in receiver.at(path) if (p := json.loads(r.body))["type"] == kind]


async def test_pages_leaving_the_index_and_a_refreshed_source_are_announced(
    nats_server: NatsServer, tmp_path: Path, model: Embedder, receiver: Receiver
) -> None:
    root = tmp_path / "site"
    shutil.copytree(SITE, root)
    with serve_site(root) as site:
        system = await start_system(
            nats_server.url,
            f"t{uuid.uuid4().hex[:10]}",
            tmp_path / "data",
            model,
            webhook_allowed_hosts="127.0.0.1",
            webhook_timeout_s=2.0,
            min_refresh_s=60,
            maintenance_sources_every_s=0.2,
            maintenance_lease_ttl_s=3.0,
        )
        client = system.client
        try:
            acme = await register(system, receiver.url("/acme"), EVENTS, brand="acme")
            other = await register(system, receiver.url("/other"), EVENTS, brand="other")
            every = await register(system, receiver.url("/every"), ["page.removed"])

            # A source's first scheduled crawl: refreshed once swept, with the crawl's counts.
            created = await client.post(
                "/api/v1/sources",
                json={
                    "url": f"{site}/index.html",
                    "brand": "acme",
                    "refresh_s": 3600,
                    "max_pages": 6,
                    "max_depth": 1,
                },
            )
            assert created.status_code == 201, created.text
            source_id = created.json()["id"]
            [refreshed] = await eventually(
                lambda: of_type(receiver, "/acme", "source.refreshed"), timeout_s=60
            )
            data = refreshed["data"]
            assert data["source_id"] == source_id
            assert data["brand"] == "acme"
            assert data["status"] == "succeeded"
            assert data["pages_ok"] >= 3
            assert data["pages_failed"] == 0
            assert (data["unchanged"], data["missed"], data["removed"]) == (0, 0, 0)
            record = await wait_terminal(client, data["task_id"])
            assert record["kind"] == "crawl"
            assert record["result"]["pages_ok"] == data["pages_ok"]
            indexed = await eventually(
                lambda: (
                    len(got := of_type(receiver, "/acme", "page.indexed")) == data["pages_ok"]
                    and got
                )
            )
            listed = (await client.get("/api/v1/documents", params={"brand": "acme"})).json()
            pages = {d["url"]: d["id"] for d in listed["items"]}
            assert len(pages) == data["pages_ok"]

            def removed(path: str) -> dict[str, dict[str, Any]]:
                return {
                    p["data"]["url"]: p["data"] for p in of_type(receiver, path, "page.removed")
                }

            async def gone(url: str) -> dict[str, Any]:
                found: dict[str, Any] = await eventually(lambda: removed("/acme").get(url))
                return found

            # Deleted through the API: its source is the one whose root holds it.
            firewall = f"{site}/config/firewall.html"
            deleted = await client.delete(f"/api/v1/documents/{pages.pop(firewall)}")
            assert deleted.status_code == 200, deleted.text
            one = await gone(firewall)
            assert (one["reason"], one["source_id"], one["brand"]) == ("deleted", source_id, "acme")
            assert one["chunks_removed"] >= 1
            assert one["task_id"] == deleted.json()["task_id"]

            # Now answering 404: a scrape of it takes it out.
            reset = f"{site}/troubleshooting/reset.html"
            pages.pop(reset)
            (root / "troubleshooting" / "reset.html").unlink()
            scrape = await client.post("/api/v1/scrape", json={"url": reset, "brand": "acme"})
            assert scrape.status_code == 202, scrape.text
            assert (await wait_terminal(client, scrape.json()["task_id"]))["status"] == "succeeded"
            assert (await gone(reset))["reason"] == "gone"
            assert removed("/acme")[reset]["source_id"] == source_id

            # Missed by two re-crawls in a row: the source's sweep takes it out.
            bus = system.host.bus
            wifi = f"{site}/config/wifi.html"
            states = PageStates(bus.buckets)
            key = pages.pop(wifi)
            state = await states.load(key)
            assert isinstance(state, PageState)
            await states.save(key, state.model_copy(update={"misses": 2}))
            source = await SourceStore(bus.buckets).get(source_id)
            assert source is not None
            assert source.last_run is not None
            await sweep(bus, source, source.last_run, complete=True)
            assert (await gone(wifi))["reason"] == "missed"

            # The source deleted with its pages: each of the rest, once.
            dropped = await client.delete(f"/api/v1/sources/{source_id}")
            assert dropped.status_code == 200, dropped.text
            for url in pages:
                assert (await gone(url))["reason"] == "source_deleted"
            by_acme = removed("/acme")
            assert {u: d["source_id"] for u, d in by_acme.items()} == dict.fromkeys(
                [firewall, reset, wifi, *pages], source_id
            )
            assert len(of_type(receiver, "/acme", "page.removed")) == len(by_acme)
            assert not (await client.get("/api/v1/documents", params={"brand": "acme"})).json()[
                "items"
            ]

            # Signed for each webhook; a webhook of every brand got the same; another
            # brand's, nothing (no page.indexed for a removal either).
            for path, hook in (("/acme", acme), ("/every", every)):
                for received in receiver.at(path):
                    assert verified(hook["secret"], received)["data"]["brand"] == "acme"
            await eventually(lambda: removed("/every") == by_acme)
            assert len(of_type(receiver, "/acme", "page.indexed")) == len(indexed)
            assert receiver.at("/other") == []
            assert other["brand"] == "other"
        finally:
            await stop_system(system)
