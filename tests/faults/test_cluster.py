"""Helpline on a three-server JetStream cluster, every stream and bucket R3, through faults.

Real `nats-server` processes clustered on loopback (`helpline.testing.cluster`), the real
`helpline up` against them (HELPLINE_NATS_URL names all three) plus a second scraper
process, a real local site. While a crawl, a stream of questions and a stream of no-op
tasks run: the server leading the task stream is killed -9 and brought back, then all three
are restarted one after the other (a rolling upgrade), then the second scraper is killed -9.
Every accepted task ends succeeded, once; the crawl's pages are in the store once each; the
questions go on being answered (failures and the longest gap printed); the views answer.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpline.common import subjects
from helpline.common.embedding import Embedder
from helpline.common.subjects import Kind
from helpline.common.vectors import open_store
from helpline.testing import HelplineUp, ServiceProcess, serve_site
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


class Load:
    """Questions and no-op tasks at a steady rate from threads, until stopped."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers
        self.stop = threading.Event()
        self.accepted: list[str] = []
        self.refused = 0
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

    def _pings(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=15) as client:
            while not self.stop.wait(0.05):
                try:
                    response = client.post("/api/v1/maintenance/ping")
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
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=15) as client:
            while not self.stop.wait(0.2):
                try:
                    response = client.post(
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
        times = [since, *(t for t in self.answered if since <= t <= until), until]
        return max(b - a for a, b in itertools.pairwise(times))


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
            if record["status"] in ("succeeded", "failed", "expired", "cancelled"):
                return record
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} not terminal after {timeout_s}s: {record}")


def test_helpline_on_a_three_server_cluster_through_faults(
    tmp_path: Path, site: str, model: Embedder
) -> None:
    env = {
        "HELPLINE_STREAM_REPLICAS": "3",
        "HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1",
        "HELPLINE_LOG_JSON": "false",
        # A message whose acknowledgement was lost with a server comes back this soon.
        "HELPLINE_ACK_WAIT_S": "5",
        "HELPLINE_BACKOFF_BASE_S": "0.2",
        "HELPLINE_BACKOFF_CAP_S": "2",
    }
    with NatsCluster(tmp_path / "nats") as cluster:
        env["HELPLINE_NATS_URL"] = cluster.url
        with (
            HelplineUp(tmp_path / "up", env) as up,
            up.client() as client,
            ServiceProcess("scraper", cluster.url, tmp_path / "scraper", env) as second,
        ):
            stream = subjects.stream(Kind.MAINTENANCE)
            assert client.get("/readyz").status_code == 200
            crawl = client.post(
                "/api/v1/crawl",
                json={"url": f"{site}/index.html", "brand": "acme", "max_pages": 30},
            )
            assert crawl.status_code == 202, crawl.text
            crawl_id = crawl.json()["task_id"]
            assert wait_terminal(client, crawl_id, 120)["status"] == "succeeded"

            with Load(up.url, up.headers) as load:
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
                # 3. One scraper replica killed -9 (up's own scraper works on).
                second.kill()
                time.sleep(3)
                faults_ended = time.monotonic()
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

            records = [wait_terminal(client, task_id, 120) for task_id in load.accepted]
            assert records, "no task was accepted during the faults"
            assert [r["status"] for r in records] == ["succeeded"] * len(records)
            assert len({r["task_id"] for r in records}) == len(load.accepted)
            assert wait_terminal(client, again.json()["task_id"], 120)["status"] == "succeeded"

            # Every indexed page's chunks are in the store once: the store's count for the
            # brand is the documents' chunk count summed.
            documents = client.get("/api/v1/documents", params={"brand": "acme", "limit": 1000})
            chunks = sum(d["chunks"] for d in documents.json()["items"])
            assert chunks > 0

            # Questions were answered through it all; after it, at once.
            gap = load.longest_gap(faults_began, faults_ended)
            answer = client.post("/api/v1/query", json={"question": QUESTIONS[0], "brand": "acme"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["sources"]
            assert load.answered, "no question was answered during the faults"
            # The views answer for the whole time.
            stats = client.get("/api/v1/metrics/stats", params={"last_n": 1000})
            assert stats.status_code == 200, stats.text
            print(
                f"CLUSTER failover_s={failover_s:.1f} tasks_accepted={len(records)} "
                f"refused={load.refused} questions_answered={len(load.answered)} "
                f"questions_failed={load.failed_questions} longest_gap_s={gap:.1f} "
                f"submit_recovered_s={recovered_s:.1f} why={dict(load.question_failures)} "
                f"marks={marks} failures_at={[round(t - faults_began, 1) for t in load.failures_at]}"
            )
            assert gap < 30, gap
    # Up has stopped and flushed its store: read it.
    store = open_store(url=None, data_dir=tmp_path / "up", collection="helpline", dim=model.dim)
    try:
        assert store.count("acme") == chunks
    finally:
        store.close()
