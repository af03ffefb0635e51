"""What a three-server JetStream cluster costs and how fast it recovers: questions and no-op
tasks on one nats-server (streams and buckets R1) against a cluster of three (R3), in one
run, then the recovery time when the server leading the task stream is killed -9.

Each mode: the real `helpline up` against its bus (HELPLINE_NATS_URL; HELPLINE_STREAM_REPLICAS
1 or 3), the same site indexed through the API (tests/site, or `--site`), distinct questions
at concurrency 8 (`"cache": false` and rag's embedding cache off: the model runs for each;
the bus hops are what differ), then N no-op pings from 64 connections counted until every
record is terminal. Modes alternate for `--rounds`; medians are printed.

Recovery (cluster only): while pings are submitted every 20 ms, the leader of the
maintenance task stream is killed -9: the time until a ping submitted after the kill is
accepted, and until one is done; the longest stretch without an accepted submit; then the
server is brought back. All on loopback on this machine: the cluster's three servers share
its cores with Helpline and the load generator.

    uv run python bench/cluster.py [--rounds 2] [--questions 200] [--pings 1000] [--site DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from loadgen import query_load
from results import capture
from telemetry import pings

from helpline.cli.natsserver import NatsServer
from helpline.common import subjects
from helpline.common.subjects import Kind
from helpline.testing import HelplineUp, serve_site
from helpline.testing.cluster import NatsCluster

SITE = Path(__file__).parent.parent / "tests" / "site"
BRAND = "acme"
TOPICS = [
    "hold the reset button",
    "error FW-409",
    "forward a port",
    "the status lights",
    "update the firmware",
    "change the Wi-Fi password",
    "install the router",
    "the privacy policy",
]
TEMPLATES = [
    "How do I {}?",
    "What about {}?",
    "Can you explain {}, please?",
    "I need help with {}.",
    "Where do I read about {}?",
]


def distinct_questions(n: int, offset: int) -> list[str]:
    """N questions no other call of the run asks (a ticket number makes each its own)."""
    combos = itertools.cycle(itertools.product(TEMPLATES, TOPICS))
    return [
        f"{template.format(topic)} (ticket {offset + i})"
        for i, (template, topic) in zip(range(n), combos, strict=False)
    ]


def wait_done(client: httpx.Client, task_id: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(f"/api/v1/tasks/{task_id}")
        if response.status_code == 200 and response.json()["status"] in (
            "succeeded",
            "failed",
            "cancelled",
            "expired",
        ):
            return str(response.json()["status"])
        time.sleep(0.2)
    raise TimeoutError(f"task {task_id} not done in {timeout_s}s")


def measure(
    up: HelplineUp, site: str, questions: int, n_pings: int, offset: int
) -> dict[str, float]:
    key = up.admin_key
    with up.client() as client:
        crawl = client.post(
            "/api/v1/crawl", json={"url": f"{site}/index.html", "brand": BRAND, "max_pages": 50}
        )
        assert wait_done(client, crawl.json()["task_id"]) == "succeeded"
    asked = distinct_questions(questions + 20, offset)
    asyncio.run(query_load(up.url, 2, 20, asked[:20], brand=BRAND, cache=False, key=key))
    load = query_load(up.url, 8, questions, asked[20:], brand=BRAND, cache=False, key=key)
    c8 = asyncio.run(load)
    rate = asyncio.run(pings(up.url, n_pings, key))
    return {"qps": c8["qps"], "p50": c8["p50"], "p99": c8["p99"], "pings_per_s": rate}


def recovery(cluster: NatsCluster, up: HelplineUp) -> dict[str, float]:
    """Kill -9 the task stream's leader while pings are submitted every 20 ms."""
    stream = subjects.stream(Kind.MAINTENANCE)
    leader = cluster.leader(stream)
    accepted: list[tuple[float, str]] = []
    with up.client(timeout_s=10) as client:
        for _ in range(20):  # the steady state before
            response = client.post("/api/v1/maintenance/ping")
            assert response.status_code == 202, response.text
            time.sleep(0.02)
        cluster.kill(leader)
        killed = time.monotonic()
        while time.monotonic() - killed < 60:
            try:
                response = client.post("/api/v1/maintenance/ping")
            except httpx.HTTPError:
                time.sleep(0.02)
                continue
            if response.status_code == 202:
                accepted.append((time.monotonic(), response.json()["task_id"]))
                if len(accepted) >= 20:
                    break
            time.sleep(0.02)
        if not accepted:
            raise RuntimeError("no submit was accepted within 60 s of the kill")
        first_at, first_id = accepted[0]
        wait_done(client, first_id, 120)
        done_at = time.monotonic()
        times = [killed, *(t for t, _ in accepted)]
        gap = max(b - a for a, b in itertools.pairwise(times))
        statuses = [wait_done(client, task_id, 120) for _, task_id in accepted]
    cluster.restart(leader)
    return {
        "accepted_after_s": first_at - killed,
        "done_after_s": done_at - killed,
        "longest_gap_s": gap,
        "succeeded": statuses.count("succeeded"),
        "of": len(statuses),
    }


def one_round(
    tmp: Path, mode: str, site: str, questions: int, n_pings: int, offset: int
) -> tuple[dict[str, float], dict[str, float] | None]:
    env = {
        "HELPLINE_LOG_LEVEL": "WARNING",
        "HELPLINE_RAG_EMBEDDING_CACHE": "0",
        "HELPLINE_MAINTENANCE_CONCURRENCY": "64",
        "HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1",
        "HELPLINE_ACK_WAIT_S": "5",
    }
    folder = Path(tempfile.mkdtemp(prefix=mode.replace(" ", "-"), dir=tmp))
    with ExitStack() as stack:
        if mode == "R3 cluster":
            cluster = stack.enter_context(NatsCluster(folder / "nats"))
            env |= {"HELPLINE_NATS_URL": cluster.url, "HELPLINE_STREAM_REPLICAS": "3"}
        else:
            server = stack.enter_context(NatsServer(folder / "nats"))
            env |= {"HELPLINE_NATS_URL": server.url, "HELPLINE_STREAM_REPLICAS": "1"}
        up = stack.enter_context(HelplineUp(folder / "up", env))
        figures = measure(up, site, questions, n_pings, offset)
        return figures, (recovery(cluster, up) if mode == "R3 cluster" else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--pings", type=int, default=1000)
    parser.add_argument("--site", type=Path, default=SITE)
    args = parser.parse_args()
    modes = ("one server", "R3 cluster")
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    recoveries: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="helpline-cluster-") as tmp,
        serve_site(args.site) as site,
    ):
        offset = 0
        for round_ in range(args.rounds):
            for mode in modes if round_ % 2 == 0 else modes[::-1]:
                figures, recovered = one_round(
                    Path(tmp), mode, site, args.questions, args.pings, offset
                )
                offset += args.questions + 20
                runs[mode].append(figures)
                if recovered:
                    recoveries.append(recovered)
                print(f"round {round_ + 1}, {mode}: {figures} {recovered or ''}", flush=True)
    printed = capture("cluster")
    print()
    print(
        f"{os.cpu_count()} cores, all on loopback; {args.questions} distinct questions at c=8 "
        f"(answer and embedding caches off), {args.pings} pings from 64 connections; median of "
        f"{args.rounds} rounds"
    )
    base = {k: statistics.median(r[k] for r in runs["one server"]) for k in runs["one server"][0]}
    for mode in modes:
        med = {k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]}
        print(
            f"{mode:>10}: questions {med['qps']:.1f}/s ({med['qps'] / base['qps'] - 1:+.1%}) "
            f"p50 {med['p50']:.0f} ms p99 {med['p99']:.0f} ms | pings {med['pings_per_s']:.0f}/s "
            f"({med['pings_per_s'] / base['pings_per_s'] - 1:+.1%})"
        )
    for r in recoveries:
        print(
            f"leader killed -9: first submit accepted after {r['accepted_after_s']:.1f} s, its "
            f"task done after {r['done_after_s']:.1f} s; longest stretch without an accepted "
            f"submit {r['longest_gap_s']:.1f} s; {r['succeeded']:.0f} of {r['of']:.0f} "
            "submitted after the kill succeeded"
        )
    printed.save()


if __name__ == "__main__":
    main()
