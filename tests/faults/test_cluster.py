"""Helpline on a three-server JetStream cluster, every stream and bucket R3, through faults.

Real `nats-server` processes clustered on loopback (`helpline.testing.cluster`), the real
`helpline up` against them (HELPLINE_NATS_URL names all three; it owns embedder, rag and
Qdrant Edge, with a gateway child) plus a second gateway, scraper and maintenance replica as
processes of their own (`helpline run <service>`), and a real local site. While questions
(round robin over the two gateways, as a load balancer sends them: a refused connection goes
to the other one) and no-op tasks run: the server leading the task stream is killed -9 and
brought back, all three are restarted one after the other (a rolling upgrade), then one
replica of each service is killed -9 in turn and started again: the second gateway, the
second scraper and the second maintenance replica (each during a crawl or pings), then
`helpline up` itself (embedder, rag, Qdrant Edge, its scraper, maintenance and gateway)
during a crawl, restarted on the same data dir. Embedder and rag have no second replica here:
two need a Qdrant server, and none can be run on this machine (deploy/README.md).
Every accepted task ends succeeded, once; every crawl's pages are in the store once each;
questions go on being answered (failures and the longest gap printed, per kill too); the
tracker and the views recover on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpline.common import subjects
from helpline.common.bus import Bus
from helpline.common.embedding import Embedder
from helpline.common.layout import BusLayout
from helpline.common.subjects import Kind
from helpline.common.vectors import open_store
from helpline.testing import TEST_ADMIN_KEY, HelplineUp, ServiceProcess, serve_site
from helpline.testing.cluster import NatsCluster

pytestmark = pytest.mark.slow

SITE = Path(__file__).parent.parent / "site"
QUESTIONS = [
    "How long do I hold the reset button?",
    "What does error FW-409 mean?",
    "How do I forward a port?",
    "What do the status lights mean?",
    "How do I update the firmware?",
    "How do I change the Wi-Fi password?",
]
TERMINAL = ("succeeded", "failed", "expired", "cancelled")


class Load:
    """Questions and no-op tasks at a steady rate from threads, until stopped, round robin
    over the gateways; a gateway that refuses the connection (nothing was sent) is skipped
    for the next one, as a load balancer does."""

    def __init__(self, urls: list[str], headers: dict[str, str]) -> None:
        self.urls, self.headers = urls, headers
        self.stop = threading.Event()
        self.accepted: list[str] = []
        self.refused = 0
        self.rerouted = 0
        self.answered: list[float] = []
        self.failed_questions = 0
        self.question_failures: Counter[str] = Counter()
        self.failures_at: list[float] = []
        self._threads = [
            threading.Thread(target=self._pings, daemon=True),
            threading.Thread(target=self._questions, daemon=True),
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)

    @contextlib.contextmanager
    def _gateways(self) -> Iterator[Callable[..., httpx.Response]]:
        clients = [
            httpx.Client(base_url=url, headers=self.headers, timeout=15) for url in self.urls
        ]
        turn = itertools.count()

        def post(path: str, **kwargs: Any) -> httpx.Response:
            first = next(turn)
            for offset in range(len(clients)):
                try:
                    return clients[(first + offset) % len(clients)].post(path, **kwargs)
                except httpx.ConnectError:
                    if offset == len(clients) - 1:
                        raise
                    self.rerouted += 1
            raise AssertionError("unreachable")

        try:
            yield post
        finally:
            for client in clients:
                client.close()

    def _pings(self) -> None:
        with self._gateways() as post:
            while not self.stop.wait(0.05):
                try:
                    response = post("/api/v1/maintenance/ping")
                except httpx.HTTPError:
                    self.refused += 1
                    continue
                if response.status_code == 202:
                    self.accepted.append(response.json()["task_id"])
                else:
                    # 503 with Retry-After while the bus elects a leader: refused, not lost.
                    assert response.status_code in (429, 503), response.text
                    self.refused += 1

    def _questions(self) -> None:
        asked = itertools.cycle(QUESTIONS)
        with self._gateways() as post:
            while not self.stop.wait(0.2):
                try:
                    response = post(
                        "/api/v1/query",
                        json={"question": next(asked), "brand": "acme", "cache": False},
                    )
                except httpx.HTTPError as exc:
                    self._failed(type(exc).__name__)
                    continue
                if response.status_code == 200 and response.json()["sources"]:
                    self.answered.append(time.monotonic())
                else:
                    self._failed(f"{response.status_code} {response.text[:80]}")

    def _failed(self, why: str) -> None:
        self.failed_questions += 1
        self.question_failures[why] += 1
        self.failures_at.append(time.monotonic())

    def longest_gap(self, since: float, until: float) -> float:
        """The longest time without an answer between `since` and `until`, counted from the
        last answer before `since` (a gap a kill fell into is counted whole)."""
        before = [t for t in self.answered if t <= since]
        times = [before[-1] if before else since]
        times += [t for t in self.answered if since < t <= until]
        return max(b - a for a, b in itertools.pairwise([*times, until]))

    def failures(self, since: float, until: float) -> int:
        return sum(1 for t in self.failures_at if since <= t < until)

    def answered_after(self, since: float, timeout_s: float) -> float:
        """Seconds from `since` to the first question answered after it (waits for one)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            after = [t for t in self.answered if t > since]
            if after:
                return after[0] - since
            time.sleep(0.1)
        raise AssertionError(f"no question answered within {timeout_s}s of {since}")


@dataclass
class Kill:
    """One replica killed -9 and started again, and what the load saw meanwhile."""

    victim: str
    at: float
    restarted_s: float = 0.0  # from the kill until the replacement was ready
    answered_s: float = 0.0  # from the kill until a question was answered again
    until: float = 0.0  # the next kill, or the end

    def summary(self, load: Load) -> str:
        return (
            f"{self.victim}: failed={load.failures(self.at, self.until)} "
            f"gap_s={load.longest_gap(self.at, self.until):.1f} "
            f"answered_again_s={self.answered_s:.1f} restarted_s={self.restarted_s:.1f}"
        )


@pytest.fixture
def site() -> Iterator[str]:
    with serve_site(SITE) as url:
        yield url


def wait_terminal(client: httpx.Client, task_id: str, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    record: dict[str, object] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/api/v1/tasks/{task_id}")
        if response.status_code == 200:
            record = response.json()
            if record["status"] in TERMINAL:
                return record
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} not terminal after {timeout_s}s: {record}")


def crawl(client: httpx.Client, site: str, brand: str) -> str:
    response = client.post(
        "/api/v1/crawl", json={"url": f"{site}/index.html", "brand": brand, "max_pages": 30}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def declare_now(url: str) -> tuple[float, int]:
    """Seconds a new replica's `Bus.bootstrap` takes now, and how often it tried again."""
    retries: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = retries.append  # type: ignore[method-assign]
    logger = logging.getLogger("helpline.common.bus")
    logger.addHandler(handler)

    async def declare() -> None:
        # The layout the processes use (HELPLINE_STREAM_REPLICAS and HELPLINE_ACK_WAIT_S).
        bus = Bus(BusLayout(replicas=3, ack_wait_s=5.0))
        await bus.connect(url, name="declare-now")
        try:
            await bus.bootstrap()
        finally:
            await bus.close()

    began = time.monotonic()
    try:
        asyncio.run(declare())
    finally:
        logger.removeHandler(handler)
    return time.monotonic() - began, sum("trying again" in r.getMessage() for r in retries)


def children(client: httpx.Client, crawl_id: str) -> list[dict[str, Any]]:
    pages = client.get("/api/v1/tasks", params={"parent": crawl_id, "limit": 1000})
    assert pages.status_code == 200, pages.text
    records: list[dict[str, Any]] = pages.json()
    return records


def pages_of(client: httpx.Client, crawl_id: str) -> Counter[str]:
    """A crawl's pages by outcome (status, and the error's text where one failed)."""
    records = children(client, crawl_id)
    assert len({p["task_id"] for p in records}) == len(records)
    return Counter(
        f"{p['status']} {(p.get('error') or {}).get('message', '')}".strip() for p in records
    )


def test_helpline_on_a_three_server_cluster_through_faults(
    tmp_path: Path, site: str, model: Embedder
) -> None:
    env = {
        "HELPLINE_STREAM_REPLICAS": "3",
        "HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1",
        "HELPLINE_LOG_JSON": "false",
        # Every replica, and `helpline up` after a restart, knows the same key.
        "HELPLINE_ADMIN_KEY": TEST_ADMIN_KEY,
        # A message whose acknowledgement was lost with a server comes back this soon.
        "HELPLINE_ACK_WAIT_S": "5",
        "HELPLINE_BACKOFF_BASE_S": "0.2",
        "HELPLINE_BACKOFF_CAP_S": "2",
    }
    brands = ("acme", "beta", "gamma")
    with NatsCluster(tmp_path / "nats") as cluster, contextlib.ExitStack() as stack:
        env["HELPLINE_NATS_URL"] = cluster.url
        up = stack.enter_context(HelplineUp(tmp_path / "up", env))
        # Second replicas, each a process of its own, started side by side.
        second = {
            name: ServiceProcess(name, cluster.url, tmp_path / name, env)
            for name in ("gateway", "scraper", "maintenance")
        }
        with ThreadPoolExecutor(len(second)) as pool:
            list(pool.map(lambda p: p.start(), second.values()))
        for replica in second.values():
            stack.callback(replica.terminate)
        gateway2 = f"http://127.0.0.1:{second['gateway'].port}"
        client = stack.enter_context(up.client())
        stream = subjects.stream(Kind.MAINTENANCE)
        assert client.get("/readyz").status_code == 200
        first = crawl(client, site, "acme")
        assert wait_terminal(client, first, 120)["status"] == "succeeded"
        cluster.wait_led()  # and learns every stream's name

        with Load([up.url, gateway2], up.headers) as load:
            time.sleep(3)
            faults_began = time.monotonic()
            # 1. The server leading the task stream, killed -9, then brought back.
            leader = cluster.leader(stream)
            cluster.kill(leader)
            killed_at = time.monotonic()
            marks = {"kill": 0.0}
            new_leader = cluster.leader(stream)
            failover_s = time.monotonic() - killed_at
            assert new_leader != leader
            time.sleep(2)
            cluster.restart(leader)
            marks["back"] = round(time.monotonic() - faults_began, 1)
            # 2. A rolling restart: each server stopped and started in turn.
            for name in list(cluster.servers):
                cluster.servers[name].stop()
                time.sleep(1)
                cluster.restart(name)
                marks[name] = round(time.monotonic() - faults_began, 1)
            # A replica starting at once declares the layout while the streams still elect
            # their leaders (requests unanswered): it tries again rather than exit.
            declared_s, declare_retries = declare_now(cluster.url)
            # Until every stream and consumer has elected a leader: the bus answers again.
            settled_s = cluster.wait_led()
            marks["led"] = round(time.monotonic() - faults_began, 1)
            time.sleep(2)

            # 3. One replica of each service killed -9 in turn, each started again once
            # the others have taken its work over (as an orchestrator restarts it).
            kills: list[Kill] = []
            crawls: list[str] = []

            def kill(victim: str, stop: Callable[[], None], start: Callable[[], object]) -> None:
                if kills:
                    kills[-1].until = time.monotonic()
                marks[victim] = round(time.monotonic() - faults_began, 1)
                kills.append(k := Kill(victim, time.monotonic()))
                stop()
                time.sleep(1)
                start()
                k.restarted_s = time.monotonic() - k.at
                k.answered_s = load.answered_after(k.at, 60)
                time.sleep(1)

            # The second gateway: its questions and pings go to the first one meanwhile.
            kill("gateway", second["gateway"].kill, second["gateway"].start)
            # The second scraper, during a crawl (up's scraper takes its pages over).
            crawls.append(crawl(client, site, "beta"))
            time.sleep(0.5)
            kill("scraper", second["scraper"].kill, second["scraper"].start)
            # The second maintenance replica, during the pings (up's runs them meanwhile).
            kill("maintenance", second["maintenance"].kill, second["maintenance"].start)
            # `helpline up`, the one process with embedder, rag and Qdrant Edge (and its
            # scraper, maintenance and gateway child), during a crawl: restarted on the same
            # data dir and ports, Edge recovering from its own files. Questions reach the
            # second gateway and wait for a rag meanwhile.
            crawls.append(crawl(client, site, "gamma"))
            time.sleep(1.0)
            kill("helpline up", up.kill, up.start)
            kills[-1].until = faults_ended = time.monotonic()
            marks["end"] = round(faults_ended - faults_began, 1)

            # A fresh crawl of the same site after it all, submitted as a client does
            # that honours 503's Retry-After: how long until the bus takes work again.
            again = client.post(
                "/api/v1/crawl",
                json={"url": f"{site}/index.html", "brand": "acme", "max_pages": 30},
            )
            while again.status_code == 503 and time.monotonic() - faults_ended < 60:
                time.sleep(float(again.headers.get("retry-after", "1")))
                again = client.post(
                    "/api/v1/crawl",
                    json={"url": f"{site}/index.html", "brand": "acme", "max_pages": 30},
                )
            recovered_s = time.monotonic() - faults_ended
            assert again.status_code == 202, again.text
            time.sleep(3)

        # Every accepted task ended succeeded, once: one record each.
        records = [wait_terminal(client, task_id, 120) for task_id in load.accepted]
        assert records, "no task was accepted during the faults"
        assert [r["status"] for r in records] == ["succeeded"] * len(records)
        assert len({r["task_id"] for r in records}) == len(load.accepted)
        # Each crawl through a kill ended as the undisturbed first one did: as many pages,
        # each with the same outcome (a page that is not a document fails in both), once.
        crawls.append(again.json()["task_id"])
        undisturbed = pages_of(client, first)
        for crawl_id in crawls:
            assert wait_terminal(client, crawl_id, 120)["status"] == "succeeded", crawl_id
            assert pages_of(client, crawl_id) == undisturbed, crawl_id
        # Tasks a killed replica held, run again by another: attempts past the first.
        again_run = {
            "pings": sum(1 for r in records if int(r["attempts"]) > 1),  # type: ignore[call-overload]
            **{
                brand: sum(1 for p in children(client, crawl_id) if p["attempts"] > 1)
                for brand, crawl_id in zip(("beta", "gamma", "again"), crawls, strict=True)
            },
        }

        # Every indexed page's chunks are in the store once: the store's count for a brand
        # is its documents' chunk count summed (checked once up has stopped, below).
        chunks: dict[str, int] = {}
        for brand in brands:
            documents = client.get("/api/v1/documents", params={"brand": brand, "limit": 1000})
            chunks[brand] = sum(d["chunks"] for d in documents.json()["items"])
            assert chunks[brand] > 0, brand

        # Questions were answered through it all; after it, at once, through either gateway.
        gap = load.longest_gap(faults_began, faults_ended)
        for url in (up.url, gateway2):
            answer = httpx.post(
                f"{url}/api/v1/query",
                json={"question": QUESTIONS[0], "brand": "acme"},
                headers=up.headers,
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["sources"]
            # The views answer from both, and list every service's live replicas.
            workers = httpx.get(f"{url}/api/v1/workers", headers=up.headers, timeout=30)
            assert workers.status_code == 200, workers.text
            live = {w["service"] for w in workers.json() if w["replica_count"]}
            assert live >= {"gateway", "scraper", "embedder", "rag", "maintenance"}, live
        assert load.answered, "no question was answered during the faults"
        # Read as a client does: a 503 (the cluster's consumers still settling after up's
        # restart) is asked again after its Retry-After, for at most 30 s.
        stats = client.get("/api/v1/metrics/stats", params={"last_n": 1000})
        asked_until = time.monotonic() + 30
        while stats.status_code == 503 and time.monotonic() < asked_until:
            time.sleep(float(stats.headers.get("retry-after", "1")))
            stats = client.get("/api/v1/metrics/stats", params={"last_n": 1000})
        assert stats.status_code == 200, stats.text
        print(
            f"CLUSTER failover_s={failover_s:.1f} declared_s={declared_s:.1f} "
            f"declare_retries={declare_retries} settled_s={settled_s:.1f} "
            f"tasks_accepted={len(records)} "
            f"refused={load.refused} rerouted={load.rerouted} "
            f"questions_answered={len(load.answered)} "
            f"questions_failed={load.failed_questions} longest_gap_s={gap:.1f} "
            f"submit_recovered_s={recovered_s:.1f} chunks={chunks} run_again={again_run} "
            f"why={dict(load.question_failures)} marks={marks} "
            f"failures_at={[round(t - faults_began, 1) for t in load.failures_at]}"
        )
        for k in kills:
            print(f"CLUSTER kill -9 {k.summary(load)}")
        assert gap < 30, gap
        for k in kills[:-1]:
            # Another replica of the same service was there all along: at most a question
            # in flight on a killed gateway is lost.
            assert load.failures(k.at, k.until) <= 1, k.summary(load)
            assert load.longest_gap(k.at, k.until) < 10, k.summary(load)
        # No second rag: questions wait (up to the 10 s query timeout) until up is back.
        up_killed = kills[-1]
        assert load.failures(up_killed.at, up_killed.until) <= 5, up_killed.summary(load)
        assert up_killed.answered_s < 30, up_killed.summary(load)
    # Up has stopped and flushed its store: read it.
    store = open_store(url=None, data_dir=tmp_path / "up", collection="helpline", dim=model.dim)
    try:
        assert {brand: store.count(brand) for brand in brands} == chunks
    finally:
        store.close()
