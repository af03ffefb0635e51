"""SIGKILL scrapers (and the embedder) again and again while pages are indexed: nothing is lost,
nothing is indexed twice."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.support import bus_quiet, gateway, layout, service, settle, start_all, submit_all

from helpline.cli.natsserver import NatsServer
from helpline.common.subjects import Kind
from helpline.common.vectors import open_store
from helpline.testing import ServiceProcess, serve_site

# Above the suite-wide 300 s, for a slower CI machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# The 2,000 pages the issue asks for: about 20 a second on a 2-core machine while scrapers
# and the embedder are killed and replaced, so the test takes about two minutes.
PAGES = 2000
SCRAPERS = 2
KILL_EVERY_S = 1.5
EMBEDDER_KILLS_AT_S = (8.0, 25.0)
SETTLE_S = 420.0  # reached only when something is lost


def page(n: int) -> str:
    """A page whose main text is one short, distinct paragraph: one chunk."""
    return (
        f"<html><head><title>Page {n}</title></head><body><main><p>Page {n} of the manual: "
        f"to pair sensor {n} with hub {n * 13 % 97}, hold its button for {n % 9 + 2} seconds "
        f"until the light blinks {n % 5 + 1} times.</p></main></body></html>"
    )


@pytest.fixture
def many_pages(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "site"
    root.mkdir()
    for n in range(PAGES):
        (root / f"p{n}.html").write_text(page(n))
    with serve_site(root) as url:
        yield url


class Chaos:
    """Kills a scraper every KILL_EVERY_S (never the last one that is ready: a replacement
    takes seconds to start on two cores) and the embedder at set times, restarting each."""

    def __init__(
        self,
        nats_url: str,
        prefix: str,
        tmp_path: Path,
        settings: dict[str, object],
        embedder: ServiceProcess,
    ) -> None:
        self.nats_url = nats_url
        self.prefix = prefix
        self.tmp_path = tmp_path
        self.settings = settings
        self.ready: list[tuple[float, ServiceProcess]] = []
        self.starting: set[asyncio.Task[ServiceProcess]] = set()
        self.embedder = embedder
        self.scraper_kills = 0
        self.embedder_kills = 0
        self.spawned = 0
        self.all: list[ServiceProcess] = [embedder]

    def scraper(self) -> ServiceProcess:
        self.spawned += 1
        proc = service(
            "scraper", self.nats_url, self.tmp_path / "scrapers", self.prefix, self.settings
        )
        self.all.append(proc)
        return proc

    async def start_scrapers(self, count: int) -> None:
        procs = [self.scraper() for _ in range(count)]
        await start_all(*procs)
        self.ready = [(time.monotonic(), p) for p in procs]

    async def _replace(self) -> ServiceProcess:
        proc = self.scraper()
        await start_all(proc)
        self.ready.append((time.monotonic(), proc))
        return proc

    async def kill_scrapers(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), KILL_EVERY_S)
                return
            now = time.monotonic()
            ripe = [(t, p) for t, p in self.ready if now - t >= KILL_EVERY_S]
            if not ripe or len(self.ready) < 2:
                continue
            victim = min(ripe, key=lambda item: item[0])
            self.ready.remove(victim)
            victim[1].kill()
            self.scraper_kills += 1
            task = asyncio.create_task(self._replace())
            self.starting.add(task)
            task.add_done_callback(self.starting.discard)

    async def kill_embedder(self, stop: asyncio.Event, began: float) -> None:
        for at in EMBEDDER_KILLS_AT_S:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, began + at - time.monotonic()))
                return
            self.embedder.kill()
            self.embedder_kills += 1
            await start_all(self.embedder)

    async def finish(self) -> None:
        """Let replacements that are starting finish starting (the work needs them)."""
        if self.starting:
            await asyncio.gather(*self.starting, return_exceptions=True)


async def test_sigkill_workers_loses_nothing(
    nats_server: NatsServer, prefix: str, tmp_path: Path, many_pages: str
) -> None:
    started = time.monotonic()
    # One site serves every page: no per-host interval (it alone would hold the run to 10
    # pages a second), and extraction in the service so a replacement starts one process.
    settings = layout(
        scraper_concurrency=6,
        embedder_concurrency=3,
        scraper_host_interval_s=0.0,
        scraper_extract_processes=0,
    )
    embedder_dir = tmp_path / "embedder"
    embedder = service("embedder", nats_server.url, embedder_dir, prefix, settings)
    chaos = Chaos(nats_server.url, prefix, tmp_path, settings, embedder)
    stop = asyncio.Event()
    try:
        async with gateway(nats_server.url, prefix, tmp_path, settings) as gw:
            await asyncio.gather(chaos.start_scrapers(SCRAPERS), start_all(embedder))
            bodies = [{"url": f"{many_pages}/p{n}.html", "brand": "b"} for n in range(PAGES)]
            began = time.monotonic()
            killers = asyncio.gather(chaos.kill_scrapers(stop), chaos.kill_embedder(stop, began))
            try:
                ids = await submit_all(gw.client, "/api/v1/scrape", bodies)
                submitted_s = time.monotonic() - began

                async def quiet() -> bool:
                    kinds = (Kind.SCRAPE, Kind.EMBED)
                    return await bus_quiet(nats_server.url, prefix, kinds)

                tally = await settle(gw.client, ids, timeout_s=SETTLE_S, quiet=quiet)
                drained = await quiet()
            finally:
                stop.set()
                await killers
                await chaos.finish()
        work_s = time.monotonic() - began
        assert embedder.terminate() == 0
        store = open_store(url=None, data_dir=embedder_dir, collection="helpline", dim=384)
        try:
            points = store.count(brand="b")
        finally:
            store.close()
    finally:
        for proc in chaos.all:
            proc.kill()
    duplicated = points - PAGES
    print(
        f"FAULT sigkill-workers: tasks={PAGES} lost={tally.lost} duplicated={duplicated} "
        f"stuck={tally.stuck} failed={tally.failed} succeeded={tally.succeeded} "
        f"points={points} bus_drained={drained} scraper_kills={chaos.scraper_kills} "
        f"embedder_kills={chaos.embedder_kills} submit_s={submitted_s:.1f} "
        f"work_s={work_s:.1f} seconds={time.monotonic() - started:.1f}"
    )
    assert tally.succeeded == PAGES, (tally.statuses, tally.unfinished())
    assert points == PAGES, f"{duplicated:+d} points against one per page"
