"""What observability costs: query latency and no-op task throughput with metrics and spans
on and off, in one run.

Runs the real `helpline up` three times over the same settled index (a copy of a data dir
made by bench/query_latency.py --data-dir, the PostgreSQL 15 manual): metrics and spans off
(HELPLINE_METRICS=false, HELPLINE_ACCESS_LOG=false), the default (metrics and the access log
on, spans not recorded), and everything on (OTEL_TRACES_SAMPLER=always_on: every span built,
with no exporter). Each configuration: `POST /api/v1/query` at concurrency 1 and 8, the
answer cache and rag's embedding cache off (the model runs for every question), then N
no-op pings through the REST API from 64 connections, counted when every record is
terminal. Configurations are run in turn, `--rounds` times, and the medians kept.

    uv run python bench/telemetry.py --data-dir /work/benchdata/pg [--requests 300]
        [--pings 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from loadgen import query_load, submit_pings
from results import capture

from helpline.common.records import TERMINAL_STATUSES
from helpline.testing import HelplineUp

CONFIGS: dict[str, dict[str, str]] = {
    "off": {"HELPLINE_METRICS": "false", "HELPLINE_ACCESS_LOG": "false"},
    "default": {},
    "spans on": {"OTEL_TRACES_SAMPLER": "always_on"},
}
CONNECTIONS = 64
#: The brand bench/query_latency.py indexes the manual under.
BRAND = "docs"
#: Customers' questions about the manual (bench/questions/postgresql.jsonl).
QUESTIONS = [
    json.loads(line)["question"]
    for line in (Path(__file__).parent / "questions" / "postgresql.jsonl").read_text().splitlines()
    if line.strip()
]


async def pings(base_url: str, n: int) -> float:
    """N no-op pings over 64 keep-alive connections; tasks/s until every record is terminal."""
    started = time.perf_counter()
    ids = await submit_pings(base_url, n, CONNECTIONS)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        for task_id in ids:
            while (await http.get(f"/api/v1/tasks/{task_id}")).json()["status"] not in (
                TERMINAL_STATUSES
            ):
                await asyncio.sleep(0.05)
    return n / (time.perf_counter() - started)


def one_round(data: Path, config: dict[str, str], requests: int, n_pings: int) -> dict[str, float]:
    env = {
        "HELPLINE_LOG_LEVEL": "WARNING",
        "HELPLINE_RAG_EMBEDDING_CACHE": "0",
        "HELPLINE_MAINTENANCE_CONCURRENCY": "64",
        **config,
    }
    with HelplineUp(data, env) as up:
        # Warm: the model's first calls and the first connections are not what users meet.
        asyncio.run(query_load(up.url, 2, 20, QUESTIONS, brand=BRAND, cache=False))
        c1 = asyncio.run(query_load(up.url, 1, requests, QUESTIONS, brand=BRAND, cache=False))
        c8 = asyncio.run(query_load(up.url, 8, requests, QUESTIONS, brand=BRAND, cache=False))
        rate = asyncio.run(pings(up.url, n_pings))
    return {
        "c1_p50": c1["p50"],
        "c1_p99": c1["p99"],
        "c8_p50": c8["p50"],
        "c8_p99": c8["p99"],
        "c8_qps": c8["qps"],
        "pings_per_s": rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a settled index to copy")
    parser.add_argument("--requests", type=int, default=300, help="queries per concurrency")
    parser.add_argument("--pings", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not (args.data_dir / "qdrant").exists():
        raise SystemExit(f"no index in {args.data_dir}: run bench/query_latency.py --data-dir")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="helpline-telemetry-") as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(args.data_dir, data)
        for round_ in range(args.rounds):
            for name, config in CONFIGS.items():
                figures = one_round(data, config, args.requests, args.pings)
                runs[name].append(figures)
                print(f"round {round_ + 1}, {name}: {figures}", flush=True)
    printed = capture("telemetry")
    print()
    print(
        f"{os.cpu_count()} cores; {args.requests} questions per concurrency (cache and embedding "
        f"cache off), {args.pings} pings; median of {args.rounds} rounds"
    )
    base = {k: statistics.median(r[k] for r in runs["off"]) for k in runs["off"][0]}
    for name in CONFIGS:
        med = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
        print(
            f"{name:>9}: query c=1 p50 {med['c1_p50']:.1f} ms p99 {med['c1_p99']:.1f} ms | "
            f"c=8 p50 {med['c8_p50']:.1f} ms p99 {med['c8_p99']:.1f} ms {med['c8_qps']:.0f} q/s "
            f"({med['c8_qps'] / base['c8_qps'] - 1:+.1%}) | pings {med['pings_per_s']:.0f}/s "
            f"({med['pings_per_s'] / base['pings_per_s'] - 1:+.1%})"
        )
    printed.save()


if __name__ == "__main__":
    main()
