"""Sources (issue 19): the API against a real bus and site, the lease between replicas, and the
schedule run by two maintenance processes, one of them killed."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from conftest import start_system, stop_system
from e2e_helpers import wait_terminal
from test_auth import make_key

from helpline.cli.natsserver import NatsServer
from helpline.common.bus import Bus
from helpline.common.embedding import Embedder
from helpline.common.leases import Lease
from helpline.common.messages import utcnow
from helpline.common.sources import (
    SCHEDULE_LEASE,
    Source,
    SourceStore,
    new_source,
    next_due_after,
    run_task_id,
)
from helpline.common.subjects import Bucket, Kind, tasks_wildcard
from helpline.testing import ServiceProcess, bearer


async def eventually(check: Any, timeout_s: float = 30.0, every_s: float = 0.1) -> Any:
    """`check()`'s first truthy value, polled until `timeout_s`."""
    end = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < end, "not reached in time"
        await asyncio.sleep(every_s)


def test_missed_runs_are_started_once_on_the_grid() -> None:
    due = utcnow()
    assert next_due_after(due, 60, due) == due + timedelta(seconds=60)
    assert next_due_after(due, 60, due + timedelta(seconds=59)) == due + timedelta(seconds=60)
    # Five periods missed: the next run is the first grid time after now, not five at once.
    late = due + timedelta(seconds=5 * 60 + 1)
    assert next_due_after(due, 60, late) == due + timedelta(seconds=6 * 60)


async def test_a_lease_has_one_holder_until_it_runs_out_or_is_released(bus: Bus) -> None:
    first = Lease(bus.buckets, "job", "first", ttl_s=0.6)
    second = Lease(bus.buckets, "job", "second", ttl_s=0.6)
    assert await first.hold()
    assert not await second.hold()
    assert await first.hold()  # renewed
    assert not await second.hold()
    # The holder stops renewing (it died): the other takes over once the lease ran out.
    await asyncio.sleep(0.7)
    assert not first.held()
    assert await second.hold()
    assert not await first.hold()
    assert (await second.current()).holder == "second"  # type: ignore[union-attr]
    # A clean stop hands it over at once.
    await second.release()
    assert await first.hold()


async def test_two_replicas_writing_at_once_leave_one_holder(bus: Bus) -> None:
    leases = [Lease(bus.buckets, "race", f"r{i}", ttl_s=30) for i in range(8)]
    held = await asyncio.gather(*(lease.hold() for lease in leases))
    assert sum(held) == 1


async def test_sources_api(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder, docs_site: str
) -> None:
    system = await start_system(
        nats_server.url,
        prefix,
        tmp_path,
        model,
        min_refresh_s=60,
        maintenance_sources_every_s=0.2,
        maintenance_lease_ttl_s=3.0,
    )
    client = system.client
    try:
        # Bad input: the field and the reason.
        url = f"{docs_site}/config/"
        for body, field in (
            ({"url": url, "brand": "acme", "refresh_s": 59}, "refresh_s"),
            ({"url": url, "brand": "acme", "refresh_s": 0}, "refresh_s"),
            ({"url": url, "brand": "acme", "refresh_s": 31 * 24 * 3600}, "refresh_s"),
            ({"url": "ftp://x/", "brand": "acme", "refresh_s": 60}, "url"),
            ({"url": url, "brand": "a b", "refresh_s": 60}, "brand"),
            ({"url": url, "brand": "acme"}, "refresh_s"),
            ({"url": url, "brand": "acme", "refresh_s": "60"}, "refresh_s"),
            ({"url": url, "brand": "acme", "refresh_s": 60, "max_pages": 0}, "max_pages"),
            ({"url": url, "brand": "acme", "refresh_s": 60, "depth": 2}, "depth"),
        ):
            response = await client.post("/api/v1/sources", json=body)
            assert response.status_code == 422, (body, response.text)
            fields = [e["field"] for e in response.json()["errors"]]
            assert any(field in f for f in fields), (body, response.json())
            # One shape for every 422 (the document's `FieldError`).
            for error in response.json()["errors"]:
                assert set(error) == {"field", "location", "message", "type"}, error

        created = await client.post(
            "/api/v1/sources",
            json={"url": url, "brand": "acme", "refresh_s": 3600, "max_pages": 5, "max_depth": 1},
        )
        assert created.status_code == 201, created.text
        source = created.json()
        assert created.headers["location"].endswith(f"/api/v1/sources/{source['id']}")
        assert source["refresh_s"] == 3600
        assert source["max_pages"] == 5
        assert source["last_crawl"] is None
        assert source["next_due"] == source["created_at"]

        # The schedule starts its first crawl (low) within moments; the source tells how it went.
        async def crawled() -> dict[str, Any] | None:
            current = (await client.get(f"/api/v1/sources/{source['id']}")).json()
            last = current["last_crawl"]
            return current if last and last["status"] == "succeeded" else None

        done = await eventually(crawled, timeout_s=60)
        last = done["last_crawl"]
        assert last["pages_ok"] >= 1
        assert last["pages_failed"] == 0
        assert last["chunks_indexed"] >= 1
        record = (await client.get(f"/api/v1/tasks/{last['task_id']}")).json()
        assert record["kind"] == "crawl"
        assert record["priority"] == "low"
        assert record["brand"] == "acme"
        assert last["due_at"] == source["next_due"]
        # The next run is one refresh after the first was due.
        assert done["next_due"] > source["next_due"]

        # Listed, by brand.
        other = await client.post(
            "/api/v1/sources", json={"url": f"{docs_site}/x/", "brand": "globex", "refresh_s": 600}
        )
        assert other.status_code == 201
        listed = (await client.get("/api/v1/sources")).json()
        assert [s["id"] for s in listed["items"]] == [source["id"], other.json()["id"]]
        assert listed["next_cursor"] is None
        acme_only = (await client.get("/api/v1/sources", params={"brand": "acme"})).json()
        assert [s["id"] for s in acme_only["items"]] == [source["id"]]

        # Changed: a new refresh moves the next crawl; bad changes are refused, field named.
        patched = await client.patch(
            f"/api/v1/sources/{source['id']}", json={"refresh_s": 120, "exclude": ["*/old/*"]}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["refresh_s"] == 120
        assert patched.json()["exclude"] == ["*/old/*"]
        assert patched.json()["next_due"] < done["next_due"]
        assert patched.json()["max_pages"] == 5  # untouched
        for body, field in (
            ({"refresh_s": 10}, "refresh_s"),
            ({"brand": "globex"}, "brand"),
            ({"max_depth": 99}, "max_depth"),
        ):
            response = await client.patch(f"/api/v1/sources/{source['id']}", json=body)
            assert response.status_code == 422, (body, response.text)
            assert any(field in e["field"] for e in response.json()["errors"]), response.json()

        # A brand-limited key sees and changes only its brands' sources.
        globex = bearer(await make_key(client, scopes=["query", "submit"], brands=["globex"]))
        seen = (await client.get("/api/v1/sources", headers=globex)).json()
        assert [s["id"] for s in seen["items"]] == [other.json()["id"]]
        for method in ("GET", "PATCH", "DELETE"):
            response = await client.request(
                method, f"/api/v1/sources/{source['id']}", headers=globex, json={}
            )
            assert response.status_code == 404, (method, response.text)
        refused = await client.post(
            "/api/v1/sources",
            json={"url": url, "brand": "acme", "refresh_s": 600},
            headers=globex,
        )
        assert refused.status_code == 403
        assert (
            await client.get("/api/v1/sources", params={"brand": "acme"}, headers=globex)
        ).status_code == 403
        # A query-only key reads but does not change.
        reading = bearer(await make_key(client, scopes=["query"]))
        assert (
            await client.get(f"/api/v1/sources/{source['id']}", headers=reading)
        ).status_code == 200
        assert (
            await client.delete(f"/api/v1/sources/{source['id']}", headers=reading)
        ).status_code == 403

        # Deleted: gone, and deleting again is not found.
        deleted = await client.delete(f"/api/v1/sources/{source['id']}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["documents_removed"] >= 1  # its pages went with it
        assert (await client.get(f"/api/v1/sources/{source['id']}")).status_code == 404
        assert (await client.delete(f"/api/v1/sources/{source['id']}")).status_code == 404
        assert (await client.get("/api/v1/sources/..")).status_code == 404
        listed = (await client.get("/api/v1/sources")).json()
        assert [s["id"] for s in listed["items"]] == [other.json()["id"]]
    finally:
        await stop_system(system)


def maintenance_env(prefix: str) -> dict[str, str]:
    return {
        "HELPLINE_BUS_PREFIX": prefix,
        "HELPLINE_FILE_STORAGE": "false",
        "HELPLINE_MAINTENANCE_RECONCILE_EVERY_S": "0",
        "HELPLINE_MAINTENANCE_SOURCES_EVERY_S": "0.1",
        "HELPLINE_MAINTENANCE_LEASE_TTL_S": "1.5",
        "HELPLINE_LOG_LEVEL": "WARNING",
    }


def holder_pid(holder: str) -> int:
    """The process id in a lease holder's name (`<host>-<pid>-<nonce>`)."""
    return int(holder.rsplit("-", 2)[1])


async def test_two_replicas_start_each_due_run_once_also_when_the_holder_is_killed(
    nats_server: NatsServer, bus: Bus, prefix: str, tmp_path: Path
) -> None:
    refresh_s = 1
    store = SourceStore(bus.buckets)
    published: Counter[str] = Counter()
    started_by: dict[str, str | None] = {}  # each run noted on the source, and by whom

    async def seen(msg: Any) -> None:
        published[json.loads(msg.data)["task_id"]] += 1

    async def follow(watcher: Any) -> None:
        async for entry in watcher:
            if entry is not None and entry.value:
                run = Source.model_validate_json(entry.value).last_run
                if run is not None:
                    started_by.setdefault(run.task_id, run.started_by)

    # Every crawl published, duplicates included (the stream would drop a second copy
    # within its duplicate window; a plain subscription sees both).
    sub = await bus.nc.subscribe(tasks_wildcard(Kind.CRAWL, prefix), cb=seen)
    replicas = [
        ServiceProcess("maintenance", nats_server.url, tmp_path / f"m{i}", maintenance_env(prefix))
        for i in range(2)
    ]
    watcher = None
    following = None
    try:
        for replica in replicas:
            replica.start()
        source = new_source("http://127.0.0.1:9/", "acme", refresh_s)
        watcher = await (await bus.buckets.get(Bucket.SOURCES)).watch(source.id)
        following = asyncio.create_task(follow(watcher))
        await store.create(source)
        lease = Lease(bus.buckets, SCHEDULE_LEASE, "the test", ttl_s=1)

        async def runs_at_least(n: int) -> bool:
            return len(started_by) >= n

        await eventually(lambda: runs_at_least(6), timeout_s=30)
        state = await lease.current()
        assert state is not None
        victim = next(r for r in replicas if r.pid == holder_pid(state.holder))
        survivor = next(r for r in replicas if r is not victim)
        victim_pid, survivor_pid = victim.pid, survivor.pid
        victim.kill()
        before = dict(started_by)
        await eventually(lambda: runs_at_least(len(before) + 6), timeout_s=40)
        state = await lease.current()
        assert state is not None
        assert holder_pid(state.holder) == survivor_pid
    finally:
        await sub.unsubscribe()
        for replica in replicas:
            replica.kill()
        if watcher is not None:
            await watcher.stop()
        if following is not None:
            following.cancel()
    await asyncio.sleep(0.2)  # the last publishes reach the subscription

    # Only the holder started runs: the killed one until it died, then the survivor.
    assert {holder_pid(by or "") for by in before.values()} == {victim_pid}, before
    after = {k: v for k, v in started_by.items() if k not in before}
    assert {holder_pid(by or "") for by in after.values()} == {survivor_pid}, after
    # Each run started once, on the source's grid (created, created + 1 s, ...).
    grid = {run_task_id(source, source.created_at + timedelta(seconds=k)) for k in range(600)}
    assert set(published) <= grid
    assert set(started_by) <= set(published)
    assert all(count == 1 for count in published.values()), published
    # The stream holds each run once too: nothing consumes crawls here.
    info = await bus.js.stream_info(bus.layout.task_stream(Kind.CRAWL))
    assert info.state.messages == len(published)


async def test_documents_are_listed_by_brand_and_source_in_pages(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder, docs_site: str
) -> None:
    system = await start_system(
        nats_server.url, prefix, tmp_path, model, maintenance_sources_every_s=0.2
    )
    client = system.client
    try:
        crawl = await client.post(
            "/api/v1/crawl",
            json={"url": f"{docs_site}/index.html", "brand": "acme", "max_pages": 8},
        )
        scrape = await client.post(
            "/api/v1/scrape", json={"url": f"{docs_site}/privacy.html", "brand": "globex"}
        )
        for response in (crawl, scrape):
            record = await wait_terminal(client, response.json()["task_id"])
            assert record["status"] == "succeeded", record
        crawled = (await client.get(f"/api/v1/tasks/{crawl.json()['task_id']}")).json()
        pages_ok = crawled["result"]["pages_ok"]

        everything = (await client.get("/api/v1/documents", params={"limit": 1000})).json()
        assert everything["next_cursor"] is None
        items = everything["items"]
        acme = [d for d in items if d["brand"] == "acme"]
        assert len(acme) == pages_ok
        assert [d["url"] for d in items if d["brand"] == "globex"] == [f"{docs_site}/privacy.html"]
        assert [d["url"] for d in items] == sorted(d["url"] for d in items)
        for document in items:
            assert document["chunks"] >= 1, document
            assert document["title"]
            assert document["fetched_at"], document
            assert document["indexed_at"], document
            assert document["last_modified"], document  # the test site sends it
        firewall = next(d for d in acme if d["url"].endswith("/config/firewall.html"))
        assert firewall["task_id"]
        assert (await client.get(f"/api/v1/tasks/{firewall['task_id']}")).json()["kind"] == "scrape"

        # Pages of two: every document once, in the same order.
        walked: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/v1/documents", params=params)).json()
            assert len(page["items"]) <= 2
            walked += [d["id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert walked == [d["id"] for d in items]

        # By brand; by source (its brand's pages under its root URL).
        by_brand = (await client.get("/api/v1/documents", params={"brand": "globex"})).json()
        assert [d["brand"] for d in by_brand["items"]] == ["globex"]
        source = (
            await client.post(
                "/api/v1/sources",
                json={
                    "url": f"{docs_site}/config/firewall.html",
                    "brand": "acme",
                    "refresh_s": 3600,
                },
            )
        ).json()
        in_source = (await client.get("/api/v1/documents", params={"source": source["id"]})).json()[
            "items"
        ]
        expected = [d["url"] for d in acme if d["url"].startswith(f"{docs_site}/config/")]
        assert expected
        assert [d["url"] for d in in_source] == expected

        # Bad input names its field; a brand-limited key sees only its brand's documents.
        for params, field in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit")):
            response = await client.get("/api/v1/documents", params=params)
            assert response.status_code == 422, response.text
            assert any(field in e["field"] for e in response.json()["errors"]), response.json()
        # Any cursor is a place in the order: one not made here starts somewhere, no error.
        middle = items[len(items) // 2]
        resumed = await client.get(
            "/api/v1/documents", params={"cursor": f"{middle['id']}:{middle['url']}"}
        )
        assert [d["id"] for d in resumed.json()["items"]] == walked[len(items) // 2 + 1 :]
        assert (await client.get("/api/v1/documents", params={"cursor": "z"})).status_code == 200
        missing = await client.get("/api/v1/documents", params={"source": "nope"})
        assert missing.status_code == 404
        globex = bearer(await make_key(client, scopes=["query"], brands=["globex"]))
        seen = (await client.get("/api/v1/documents", headers=globex)).json()["items"]
        assert [d["brand"] for d in seen] == ["globex"]
        hidden = await client.get(
            "/api/v1/documents", params={"source": source["id"]}, headers=globex
        )
        assert hidden.status_code == 404
        refused = await client.get("/api/v1/documents", params={"brand": "acme"}, headers=globex)
        assert refused.status_code == 403
    finally:
        await stop_system(system)
