"""A soak: mixed load against a running `helpline up` for a while, every process's memory
sampled, and what went wrong counted. `bench/soak.py` runs it for 30 minutes and plots it;
`tests/faults/test_soak.py` runs two minutes of it in CI.

The load, all through the REST API: distinct questions at a steady rate, a crawl of the site
at the start, a batch of its pages every `batch_every_s`, and a source on the site with a
short refresh, so the maintenance schedule re-crawls it during the soak. Every task the
gateway accepted is followed to its end; the processes' resident memory (`helpline up`, its
gateway child, nats-server) is read from /proc every `sample_every_s`."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from helpline.testing import HelplineUp

TERMINAL = ("succeeded", "failed", "cancelled", "expired")
TOPICS = [
    "hold the reset button",
    "error FW-409",
    "forward a port",
    "the status lights",
    "update the firmware",
    "change the Wi-Fi password",
]


@dataclass
class SoakResult:
    duration_s: float
    #: (seconds since the start, {process: RSS bytes}) every sample.
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    questions: int = 0
    question_failures: int = 0
    accepted: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)
    source_crawls: int = 0
    error_lines: list[str] = field(default_factory=list)

    def growth(self, process: str, warmup_s: float) -> float:
        """RSS at the end over RSS at the end of the warm-up, less one (0.03: 3% more)."""
        after = [rss[process] for t, rss in self.samples if t >= warmup_s and process in rss]
        if len(after) < 2:
            return 0.0
        return after[-1] / after[0] - 1


def process_tree(pid: int) -> dict[str, int]:
    """`helpline up` (pid), its gateway child and its nats-server: name -> pid."""
    found = {"helpline up": pid}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != pid:
                continue
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "nats-server" in cmdline:
            found["nats-server"] = int(stat.parent.name)
        elif "gateway" in cmdline:
            found["gateway"] = int(stat.parent.name)
    return found


def rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def soak(
    up: HelplineUp,
    site: str,
    duration_s: float,
    *,
    question_every_s: float = 0.25,
    batch_every_s: float = 30.0,
    sample_every_s: float = 10.0,
    refresh_s: int = 60,
) -> SoakResult:
    """Run the load for `duration_s` against `up` (its gateway must allow loopback sites and a
    refresh as short as `refresh_s`); then wait for every accepted task."""
    assert up.process is not None
    result = SoakResult(duration_s=duration_s)
    stop = threading.Event()
    lock = threading.Lock()
    started = time.monotonic()
    with up.client(timeout_s=30) as client:
        source = client.post(
            "/api/v1/sources",
            json={"url": f"{site}/index.html", "brand": "soak", "refresh_s": refresh_s},
        )
        source.raise_for_status()
        source_id = source.json()["id"]
        crawl = client.post("/api/v1/crawl", json={"url": f"{site}/index.html", "brand": "soak"})
        crawl.raise_for_status()
        result.accepted.append(crawl.json()["task_id"])

    def ask() -> None:
        templates = ["How do I {}?", "What about {}?", "Tell me about {} please.", "{}: help"]
        asked = (
            t.format(topic) for t, topic in itertools.cycle(itertools.product(templates, TOPICS))
        )
        with up.client(timeout_s=30) as client:
            for n in itertools.count():
                if stop.wait(question_every_s):
                    return
                question = f"{next(asked)} (case {n})"
                try:
                    answer = client.post(
                        "/api/v1/query",
                        json={"question": question, "brand": "soak", "cache": n % 3 == 0},
                    )
                    ok = answer.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    result.questions += 1
                    result.question_failures += 0 if ok else 1

    def batches() -> None:
        pages = ["index.html", "privacy.html", "terms.html", "config/wifi.html"]
        with up.client(timeout_s=30) as client:
            while not stop.wait(batch_every_s):
                response = client.post(
                    "/api/v1/scrape/batch",
                    json={"urls": [f"{site}/{p}" for p in pages], "brand": "soak"},
                )
                if response.status_code == 202:
                    with lock:
                        result.accepted.append(response.json()["task_id"])

    threads = [threading.Thread(target=f, daemon=True) for f in (ask, batches)]
    for thread in threads:
        thread.start()
    try:
        while (elapsed := time.monotonic() - started) < duration_s:
            tree = process_tree(up.process.pid)
            sample = {name: r for name, pid in tree.items() if (r := rss(pid)) is not None}
            result.samples.append((elapsed, sample))
            time.sleep(min(sample_every_s, max(0.0, duration_s - elapsed)))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    with up.client(timeout_s=30) as client:
        deadline = time.monotonic() + 180
        for task_id in result.accepted:
            status = ""
            while time.monotonic() < deadline:
                status = client.get(f"/api/v1/tasks/{task_id}").json().get("status", "")
                if status in TERMINAL:
                    break
                time.sleep(0.2)
            if status in TERMINAL:
                result.statuses[status] = result.statuses.get(status, 0) + 1
            else:
                result.unfinished.append(task_id)
        crawled = client.get(
            "/api/v1/tasks", params={"kind": "crawl", "brand": "soak", "limit": 1000}
        ).json()
        result.source_crawls = sum(1 for t in crawled if t["task_id"] != result.accepted[0])
        client.delete(f"/api/v1/sources/{source_id}", params={"keep_documents": "true"})
    result.error_lines = [
        line
        for line in up.log_path.read_text(errors="replace").splitlines()
        if '"level": "ERROR"' in line or " ERROR " in line or "Traceback" in line
    ]
    return result
