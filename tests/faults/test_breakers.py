"""A failing vector store opens its breaker; work waits instead of burning attempts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conftest import start_system, stop_system
from e2e_helpers import wait_terminal

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.common.vectors import Hit, IndexedPoint, VectorStore, open_store


class FailingStore:
    """A real store behind a switch: while `down`, every call fails like a lost connection."""

    def __init__(self, inner: VectorStore) -> None:
        self.inner = inner
        self.holds_gil = inner.holds_gil
        self.down = False
        self.calls_while_down = 0

    def _check(self) -> None:
        if self.down:
            self.calls_while_down += 1
            raise ConnectionError("connection refused")

    def ensure_collection(self) -> None:
        self.inner.ensure_collection()

    def upsert(self, points: Sequence[IndexedPoint]) -> None:
        self._check()
        self.inner.upsert(points)

    def delete(self, ids: Sequence[str]) -> None:
        self._check()
        self.inner.delete(ids)

    def search(
        self, vector: Any, limit: int, brand: str | None = None, sparse: Any = None
    ) -> list[Hit]:
        self._check()
        return self.inner.search(vector, limit, brand, sparse)

    def hashes_for_url(self, url: str, brand: str) -> dict[str, str]:
        self._check()
        return self.inner.hashes_for_url(url, brand)

    def count(self, brand: str | None = None) -> int:
        return self.inner.count(brand)

    def maintain(self) -> bool:
        self._check()
        return self.inner.maintain()

    def close(self) -> None:
        self.inner.close()


async def test_store_outage_opens_breaker_and_nothing_is_dead_lettered(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder, docs_site: str
) -> None:
    store = FailingStore(
        open_store(url=None, data_dir=tmp_path, collection="helpline", dim=model.dim)
    )
    # Two attempts only: if waiting on the breaker spent attempts, tasks would be dead-lettered.
    system = await start_system(
        nats_server.url,
        prefix,
        tmp_path,
        model,
        store=store,
        max_deliver=2,
        # A failure before the breaker opens spends an attempt (that is what the threshold
        # counts); retries wait long enough that every page's first failure comes first,
        # however the scraper's host pace spreads the pages out.
        backoff_base_s=4.0,
        breaker_store_failures=3,
        breaker_store_open_s=0.5,
    )
    try:
        client = system.client
        store.down = True
        pages = [
            "config/wifi.html",
            "config/firewall.html",
            "troubleshooting/reset.html",
            "troubleshooting/leds.html",
            "index.html",
        ]
        ids = []
        for page in pages:
            response = await client.post(
                "/api/v1/scrape", json={"url": f"{docs_site}/{page}", "brand": "acme"}
            )
            ids.append(response.json()["task_id"])
        deadline = time.monotonic() + 20
        breaker: dict[str, Any] = {}
        while time.monotonic() < deadline:
            replicas = (await client.get("/api/v1/breakers")).json()
            found = [b for r in replicas for b in r["breakers"] if b["name"] == "vector-store"]
            if found and found[0]["times_opened"] >= 1:
                breaker = found[0]
                break
            await asyncio.sleep(0.2)
        assert breaker, "the vector-store breaker never opened"
        outage_s = 3.0
        await asyncio.sleep(outage_s)
        records = [(await client.get(f"/api/v1/tasks/{t}")).json() for t in ids]
        assert all(r["status"] in {"queued", "running", "retrying"} for r in records), [
            (r["status"], r["attempts"], r["error"]) for r in records
        ]
        store.down = False
        finished = [await wait_terminal(client, t, timeout_s=30) for t in ids]
        letters = (await client.get("/api/v1/dlq")).json()
        failed = [r for r in finished if r["status"] != "succeeded"]
        print(
            f"FAULT store-outage: tasks={len(ids)} failed={len(failed)} dead_lettered={len(letters)} "
            f"calls_while_down={store.calls_while_down} times_opened={breaker['times_opened']}"
        )
        assert failed == []
        assert letters == []
        # The breaker kept calls off the store: far fewer than one per delivery over the outage.
        assert store.calls_while_down < 40
        assert all(r["attempts"] <= 2 for r in finished)
    finally:
        await stop_system(system)
