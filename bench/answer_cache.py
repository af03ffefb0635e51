"""Answer cache: latency of a cached answer at the gateway, against a fresh one.

Runs the real `helpline up` in a fresh data dir, crawls the sample documentation site
(tests/site, served on 127.0.0.1), asks every question once so its answer is cached, then
measures `POST /api/v1/query` over HTTP at concurrency 1 and 8: cache hits, and the same
questions with `"cache": false` (retrieval and composition every time). Prints p50/p99 as
the client saw them and as the gateway measured them (`duration_ms`), and the cache stats.

    uv run python bench/answer_cache.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from loadgen import Connection, percentile, query_load
from results import capture

from helpline.common.records import TERMINAL_STATUSES
from helpline.testing import HelplineUp, serve_site

SITE = Path(__file__).resolve().parent.parent / "tests" / "site"
QUESTIONS = [
    "How long should I hold the reset button to restore factory settings?",
    "What does a blinking red light mean?",
    "How do I update the firmware?",
    "How do I change the wifi password?",
    "How do I open a port in the firewall?",
    "How do I install the router?",
    "What happens to my data?",
    "Can I get a refund?",
]


async def measure(
    base_url: str, concurrency: int, requests: int, *, cache: bool, key: str
) -> dict[str, float]:
    return await query_load(
        base_url, concurrency, requests, QUESTIONS, brand="acme", cache=cache, key=key
    )


async def http_floor(base_url: str, requests: int) -> dict[str, float]:
    """What any request costs here (client, uvicorn, FastAPI): the floor under a cache hit."""
    latencies: list[float] = []
    connection = Connection(base_url)
    try:
        for _ in range(requests):
            started = time.perf_counter()
            await connection.request("GET", "/healthz")
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        await connection.close()
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)}


def crawl(client: httpx.Client, site: str) -> dict[str, object]:
    body = {"url": f"{site}/index.html", "brand": "acme", "max_pages": 50, "max_depth": 3}
    response = client.post("/api/v1/crawl", json=body)
    response.raise_for_status()
    task_id = response.json()["task_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        record: dict[str, object] = client.get(f"/api/v1/tasks/{task_id}").json()
        if record["status"] in TERMINAL_STATUSES:
            return record
        time.sleep(0.2)
    raise SystemExit("the crawl did not finish in 5 minutes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="queries per measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="helpline-bench-") as tmp, serve_site(SITE) as site:
        env = {"HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1", "HELPLINE_LOG_LEVEL": "WARNING"}
        with (
            HelplineUp(Path(tmp) / "data", env) as up,
            up.client() as client,
        ):
            record = crawl(client, site)
            print(f"crawl {record['status']}: {record.get('result')}", flush=True)
            for question in QUESTIONS * 3:  # fill the cache, warm connections and code paths
                client.post("/api/v1/query", json={"question": question, "brand": "acme"})
            results = {}
            for concurrency in (1, 8):
                results[f"hit, concurrency {concurrency}"] = asyncio.run(
                    measure(up.url, concurrency, args.requests, cache=True, key=up.admin_key)
                )
                results[f"miss (cache: false), concurrency {concurrency}"] = asyncio.run(
                    measure(up.url, concurrency, args.requests // 4, cache=False, key=up.admin_key)
                )
            stats = client.get("/api/v1/cache/stats").json()
            floor = asyncio.run(http_floor(up.url, args.requests))

    printed = capture("answer_cache")
    print()
    for name, f in results.items():
        print(
            f"POST /api/v1/query {name}: p50 {f['p50']:.2f} ms, p99 {f['p99']:.2f} ms, "
            f"mean {f['mean']:.2f} ms, {f['qps']:.0f} queries/s; gateway-measured "
            f"p50 {f['server_p50']:.2f} ms, p99 {f['server_p99']:.2f} ms; "
            f"{f['hit_share']:.0%} cached"
        )
    print(
        f"GET /healthz (the HTTP stack alone), concurrency 1: p50 {floor['p50']:.2f} ms, "
        f"p99 {floor['p99']:.2f} ms"
    )
    print(f"cache stats: {stats}")
    printed.save()


if __name__ == "__main__":
    main()
