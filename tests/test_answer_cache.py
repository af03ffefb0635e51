"""The shared answer cache over the real bus: hits, invalidation by index generation, stats,
clearing, and the answer streamed as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from answer_helpers import ask, index_page, write_page
from conftest import System, start_system, stop_system

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.testing import serve_site

ACME_Q = "How long is the warranty on the X200 router?"
GLOBEX_Q = "How many hours does the Z9 battery last?"


def write_acme(root: Path, years: str) -> None:
    write_page(
        root,
        "acme/warranty.html",
        "X200 router warranty",
        f"The Acme X200 router comes with a warranty of {years} from the date of purchase.",
        "To claim the warranty, contact Acme support with the serial number printed under the "
        "router and a copy of your receipt.",
    )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "site"
    write_acme(root, "two years")
    write_page(
        root,
        "globex/battery.html",
        "Z9 battery life",
        "The Globex Z9 battery lasts twelve hours on a single charge in normal use.",
        "Charging the Z9 from empty to full takes about ninety minutes with the supplied adapter.",
    )
    with serve_site(root) as url:
        yield root, url


@pytest.fixture
async def indexed(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder, site: tuple[Path, str]
) -> AsyncIterator[System]:
    running = await start_system(nats_server.url, prefix, tmp_path / "data", model)
    try:
        _root, url = site
        await index_page(running, f"{url}/acme/warranty.html", "acme")
        await index_page(running, f"{url}/globex/battery.html", "globex")
        yield running
    finally:
        await stop_system(running)


async def test_repeat_is_a_hit_and_new_content_is_a_miss(
    indexed: System, site: tuple[Path, str]
) -> None:
    system = indexed
    root, url = site

    first = await ask(system, ACME_Q, "acme")
    assert first["cached"] is False
    assert "two years" in first["answer"]
    assert first["answer_mode"] == "extractive"
    assert first["fallback_reason"] is None

    # Same question, other case, spacing and punctuation: the same normalised key.
    again = await ask(system, "  how long is the WARRANTY on the x200   router ", "acme")
    assert again["cached"] is True
    assert again["answer"] == first["answer"]
    assert again["sources"] == first["sources"]
    assert again["task_id"] != first["task_id"]

    # top_k is part of the key.
    assert (await ask(system, ACME_Q, "acme", top_k=2))["cached"] is False

    globex = await ask(system, GLOBEX_Q, "globex")
    assert globex["cached"] is False
    assert "twelve hours" in globex["answer"]
    assert (await ask(system, GLOBEX_Q, "globex"))["cached"] is True

    # A question asked of every brand has its own key, on the all-brands generation.
    everyone = await ask(system, ACME_Q, None)
    assert everyone["cached"] is False
    assert (await ask(system, ACME_Q, None))["cached"] is True

    # The acme page changes and is scraped again: acme's generation moves on.
    write_acme(root, "five years")
    record = await index_page(system, f"{url}/acme/warranty.html", "acme")
    assert record["result"]["embedded"] >= 1, record

    fresh = await ask(system, ACME_Q, "acme")
    assert fresh["cached"] is False
    assert "five years" in fresh["answer"]
    assert "two years" not in fresh["answer"]
    assert (await ask(system, ACME_Q, "acme"))["cached"] is True
    everyone = await ask(system, ACME_Q, None)
    assert everyone["cached"] is False
    assert "five years" in everyone["answer"]

    # Another brand's answers survive acme's change.
    survivor = await ask(system, GLOBEX_Q, "globex")
    assert survivor["cached"] is True
    assert survivor["answer"] == globex["answer"]

    # Re-scraping an unchanged page commits nothing: acme's answers stay cached.
    unchanged = await index_page(system, f"{url}/acme/warranty.html", "acme")
    assert unchanged["result"]["embedded"] == 0, unchanged
    assert (await ask(system, ACME_Q, "acme"))["cached"] is True


async def test_stats_and_clear(indexed: System) -> None:
    system = indexed
    await ask(system, ACME_Q, "acme")
    await ask(system, ACME_Q, "acme")
    await ask(system, GLOBEX_Q, "globex")

    stats = (await system.client.get("/api/v1/cache/stats")).json()
    assert stats["hits"] == 1
    assert stats["misses"] == 2
    assert stats["hit_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert stats["entries"] == 2
    assert stats["bytes"] > 0
    assert stats["ttl_s"] > 0
    bus = system.host.bus
    info = await bus.js.stream_info(f"KV_{bus.layout.bucket('answers')}")
    assert info.config.allow_direct  # any replica answers a get, without the JetStream API

    cleared = await system.client.post("/api/v1/cache/clear")
    assert cleared.status_code == 200
    assert cleared.json() == {"cleared": 2}
    assert (await system.client.get("/api/v1/cache/stats")).json()["entries"] == 0
    assert (await ask(system, ACME_Q, "acme"))["cached"] is False
    assert (await ask(system, ACME_Q, "acme"))["cached"] is True

    # A request may bypass the cache: answered by rag, not counted, nothing stored.
    assert (await ask(system, ACME_Q, "acme", cache=False))["cached"] is False
    assert (await ask(system, GLOBEX_Q, "globex", cache=False))["cached"] is False
    stats = (await system.client.get("/api/v1/cache/stats")).json()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (2, 3, 1)


def parse_events(raw: str) -> list[tuple[str, dict[str, object]]]:
    """Server-sent events as (event, data); every event must have both, and data is JSON."""
    assert raw.endswith("\n\n"), raw[-50:]
    events = []
    for block in raw.strip("\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(fields) == {"event", "data"}, block
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_streamed_answer_is_well_formed_server_sent_events(indexed: System) -> None:
    system = indexed
    plain = await ask(system, ACME_Q, "acme")
    for cached in (True, False):
        question = ACME_Q if cached else "What do I need to claim the X200 warranty?"
        async with system.client.stream(
            "POST",
            "/api/v1/query",
            json={"question": question, "brand": "acme", "stream": True},
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            raw = "".join([chunk async for chunk in response.aiter_text()])
        events = parse_events(raw)
        names = [name for name, _data in events]
        assert names[0] == "sources"
        assert names[-1] == "done"
        assert set(names[1:-1]) == {"delta"}
        assert len(names) > 3
        sources = events[0][1]["sources"]
        assert isinstance(sources, list)
        assert sources[0]["url"].endswith("/acme/warranty.html")
        text = "".join(str(data["text"]) for name, data in events if name == "delta")
        done = events[-1][1]
        assert done["cached"] is cached
        assert done["answer_mode"] == "extractive"
        assert isinstance(done["task_id"], str)
        assert isinstance(done["duration_ms"], float)
        if cached:
            assert text == plain["answer"]
        else:
            assert "[1]" in text
            assert "serial number" in text


async def test_streaming_errors_are_plain_http_errors(indexed: System) -> None:
    response = await indexed.client.post(
        "/api/v1/query", json={"question": "", "brand": "acme", "stream": True}
    )
    assert response.status_code == 422
