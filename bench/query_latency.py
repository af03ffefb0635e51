"""Query latency and crawl-to-searchable time on a real documentation corpus.

Serves the PostgreSQL 15 manual (Debian's postgresql-doc-15, installed here if missing
and possible) on 127.0.0.1, runs the real `helpline up` in a fresh data dir, crawls the
manual through the API, then measures `POST /api/v1/query` at concurrency 1 and 8, first
with the answer cache bypassed (`"cache": false`: retrieval every time), then cache hits.

    uv run python bench/query_latency.py [--max-pages 1200] [--requests 200] [--data-dir D]
        [--no-embedding-cache] [--also-one-process]

With `--data-dir`, the index is kept in D and reused by the next run (no crawl). The bench
asks 40 questions over and over, so after the first round rag finds every question's
embedding in its LRU (`HELPLINE_RAG_EMBEDDING_CACHE`); `--no-embedding-cache` adds a run with
that cache off, where every question runs the model, as distinct questions would.
`--also-one-process` adds a run with every service in `helpline up`'s one process
(HELPLINE_UP_OWN_PROCESSES=[]) rather than the gateway in a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from loadgen import query_load
from results import capture

from helpline.common.records import TERMINAL_STATUSES
from helpline.common.vectors import EdgeStore
from helpline.common.vectors.edge import OPTIMIZE_QUIET_S
from helpline.embedder.app import MAINTAIN_EVERY_S
from helpline.testing import HelplineUp, serve_site

MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
#: The brand the manual is indexed under (shared with retrieval_eval: one index serves both).
BRAND = "docs"

QUESTIONS = [
    "How do I create a new database?",
    "How can I make a backup of my database?",
    "What does VACUUM do and when should I run it?",
    "How do I give a user permission to read a table?",
    "How do I create an index on several columns?",
    "What isolation levels does PostgreSQL support?",
    "How do I change the port the server listens on?",
    "How can I see which queries are running right now?",
    "How do I restore a dump made with pg_dump?",
    "What is the difference between char and varchar?",
    "How do I set up streaming replication to a standby?",
    "How do I add a column to an existing table?",
    "How can I store JSON documents and query them?",
    "What does the EXPLAIN command show?",
    "How do I allow remote connections with a password?",
    "How do I write a function in PL/pgSQL?",
    "How do I create a trigger that runs before insert?",
    "What is a foreign key constraint?",
    "How do I partition a large table by date?",
    "How can I speed up bulk loading of data?",
    "How do I upgrade to a new major version?",
    "What is write-ahead logging for?",
    "How do I search text with full text search?",
    "How can I limit how much memory a sort uses?",
    "How do I roll back a transaction to a savepoint?",
    "What happens when a deadlock is detected?",
    "How do I create a read-only user?",
    "How do I list all tables from psql?",
    "How do I generate a series of dates?",
    "How do I format a timestamp as text?",
    "What are common table expressions (WITH queries)?",
    "How do window functions like rank work?",
    "How do I copy data from a CSV file into a table?",
    "How do I enable SSL connections?",
    "How can I make a column auto-increment?",
    "What does the error 'duplicate key value violates unique constraint' mean?",
    "How do I drop a database that has active connections?",
    "How does point-in-time recovery work?",
    "How do I configure autovacuum?",
    "How can I check the size of a table on disk?",
]


def ensure_manual() -> Path:
    if MANUAL.joinpath("index.html").exists():
        return MANUAL
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing postgresql-doc-15 (Debian) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql-doc-15"],
            check=True,
        )
    if not MANUAL.joinpath("index.html").exists():
        sys.exit(f"no manual at {MANUAL}: install Debian's postgresql-doc-15")
    return MANUAL


async def measure(
    base_url: str, concurrency: int, requests: int, *, cache: bool = False
) -> dict[str, float]:
    return await query_load(base_url, concurrency, requests, QUESTIONS, brand=BRAND, cache=cache)


def crawl(client: httpx.Client, site: str, max_pages: int) -> tuple[dict, float]:
    started = time.perf_counter()
    body = {
        "url": f"{site}/index.html",
        "brand": BRAND,
        "max_pages": max_pages,
        "max_depth": 10,
    }
    response = client.post("/api/v1/crawl", json=body)
    response.raise_for_status()
    task_id = response.json()["task_id"]
    last = -1
    while True:
        record = client.get(f"/api/v1/tasks/{task_id}").json()
        progress = record.get("progress") or {}
        if progress.get("done", 0) // 100 != last:
            last = progress.get("done", 0) // 100
            print(
                f"  {record['status']}: {progress.get('done', 0)}/{progress.get('total', 0)} pages "
                f"after {time.perf_counter() - started:.0f}s",
                flush=True,
            )
        if record["status"] in TERMINAL_STATUSES:
            return record, time.perf_counter() - started
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-pages", type=int, default=1200)
    parser.add_argument("--requests", type=int, default=200, help="queries per concurrency level")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the index here; reuse it")
    parser.add_argument(
        "--no-embedding-cache",
        action="store_true",
        help="also measure uncached queries with rag's question-embedding cache off",
    )
    parser.add_argument(
        "--also-one-process",
        action="store_true",
        help="also measure uncached queries with every service in `helpline up`'s one process",
    )
    args = parser.parse_args()

    manual = ensure_manual()
    with tempfile.TemporaryDirectory(prefix="helpline-bench-") as tmp, serve_site(manual) as site:
        data = args.data_dir or Path(tmp) / "data"
        index = data / "qdrant" / "helpline"
        reuse = index.is_dir() and any(index.iterdir())
        env = {"HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1", "HELPLINE_LOG_LEVEL": "WARNING"}
        with HelplineUp(data, env) as up, httpx.Client(base_url=up.url, timeout=30) as client:
            if reuse:
                print(f"reusing the index in {index}", flush=True)
                crawl_s = None
                pages = chunks = 0
                result: dict = {}
            else:
                print(f"crawling {site} (max {args.max_pages} pages) ...", flush=True)
                record, crawl_s = crawl(client, site, args.max_pages)
                result = record.get("result") or {}
                pages = result.get("pages_ok", 0)
                chunks = result.get("chunks_indexed", 0)
            if not reuse:
                # The embedder builds the vector index once writes have paused for
                # OPTIMIZE_QUIET_S; measure the index as it serves from then on.
                print("waiting for the vector index to be built ...", flush=True)
                time.sleep(OPTIMIZE_QUIET_S + MAINTAIN_EVERY_S + 10)
            for _ in range(10):  # warm-up
                client.post("/api/v1/query", json={"question": QUESTIONS[0], "brand": BRAND})
            idle = asyncio.run(measure(up.url, 1, args.requests))
            loaded = asyncio.run(measure(up.url, 8, args.requests * 2))
            for question in QUESTIONS:  # every answer cached
                client.post("/api/v1/query", json={"question": question, "brand": BRAND})
            hits_idle = asyncio.run(measure(up.url, 1, args.requests, cache=True))
            hits_loaded = asyncio.run(measure(up.url, 8, args.requests * 2, cache=True))
        runs = [
            ("concurrency 1", idle),
            ("concurrency 8", loaded),
            ("cache hit, concurrency 1", hits_idle),
            ("cache hit, concurrency 8", hits_loaded),
        ]
        if args.also_one_process:
            one = {**env, "HELPLINE_UP_OWN_PROCESSES": "[]"}
            with HelplineUp(data, one) as up, httpx.Client(base_url=up.url, timeout=30) as client:
                for _ in range(10):  # warm-up
                    client.post("/api/v1/query", json={"question": QUESTIONS[0], "brand": BRAND})
                for concurrency, count in ((1, args.requests), (8, args.requests * 2)):
                    figures = asyncio.run(measure(up.url, concurrency, count))
                    runs.append((f"all in one process, concurrency {concurrency}", figures))
        if args.no_embedding_cache:
            with HelplineUp(data, {**env, "HELPLINE_RAG_EMBEDDING_CACHE": "0"}) as up:
                with httpx.Client(base_url=up.url, timeout=30) as client:
                    for _ in range(10):  # warm-up
                        client.post(
                            "/api/v1/query", json={"question": QUESTIONS[0], "brand": BRAND}
                        )
                runs.append(
                    (
                        "no embedding cache, concurrency 1",
                        asyncio.run(measure(up.url, 1, args.requests)),
                    )
                )
                runs.append(
                    (
                        "no embedding cache, concurrency 8",
                        asyncio.run(measure(up.url, 8, args.requests * 2)),
                    )
                )

        if crawl_s is None:
            store = EdgeStore(index, 384)
            chunks = store.count(BRAND)
            store.close()

    printed = capture("query_latency")
    print()
    if crawl_s is None:
        print(f"corpus: PostgreSQL 15 manual, {chunks} chunks (the index kept in {index})")
    else:
        print(
            f"corpus: PostgreSQL 15 manual, {pages} pages indexed "
            f"({result.get('pages_failed', 0)} failed), {chunks} chunks"
        )
        print(
            f"crawl-to-searchable: {crawl_s:.1f} s ({pages / crawl_s * 60:.0f} pages/min, "
            f"{chunks / crawl_s:.1f} chunks/s)"
        )
    print(f"load average when done: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, figures in runs:
        print(
            f"POST /api/v1/query {name}: p50 {figures['p50']:.1f} ms, p95 {figures['p95']:.1f} ms, "
            f"p99 {figures['p99']:.1f} ms, mean {figures['mean']:.1f} ms, {figures['qps']:.1f} queries/s "
            f"(gateway-measured p50 {figures['server_p50']:.1f} ms)"
        )
    printed.save()


if __name__ == "__main__":
    main()
