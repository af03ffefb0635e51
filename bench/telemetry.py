"""What observability costs: query latency and no-op task throughput with metrics, spans and
the trace store on and off, in one run.

Runs the real `helpline up` once per configuration over the same settled index (a copy of a
data dir made by bench/query_latency.py --data-dir, the PostgreSQL 15 manual): everything off
(HELPLINE_METRICS=false, HELPLINE_ACCESS_LOG=false, HELPLINE_TRACE_STORE=false); metrics and
the access log on, spans not recorded (`no store`); the default (the same, plus the trace
store: every span recorded and sent to the bus's bounded trace stream); the trace store
keeping a tenth of the traces (HELPLINE_TRACE_STORE_RATIO=0.1); and every span built with
nowhere to go (OTEL_TRACES_SAMPLER=always_on, no store: the cost of building spans alone).
Each configuration: `POST /api/v1/query` at concurrency 1 and 8, the answer cache and rag's
embedding cache off (the model runs for every question), then N no-op pings through the REST
API from 64 connections, counted when every record is terminal; beside each, the CPU that
`helpline up`'s processes (its own, the gateway's, nats-server's) spent per question at
concurrency 8 and per ping, which a busy neighbour on the machine moves far less than it
moves latencies. Configurations are run in turn, `--rounds` times, and the medians kept.

    uv run python bench/telemetry.py --data-dir /work/benchdata/pg [--requests 300]
        [--pings 3000] [--rounds 2] [--configs off,default]

`--store-cost N` measures the trace store alone, in CPU time rather than latency (a shared
machine's neighbours move latencies more than the store does): N traces shaped like a
question's (a server span with a dozen HTTP attributes and eight children with a few each,
as `GET /api/v1/traces/{id}` shows one), built with spans not recorded, recorded with nowhere
to go, and recorded into a `SpanStore` attached to a real nats-server (file storage); CPU
microseconds per trace in this process and in nats-server, and bytes per trace stored.

    uv run python bench/telemetry.py --store-cost 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from loadgen import query_load, submit_pings
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from results import capture

from helpline.cli.natsserver import NatsServer
from helpline.common import spanstore, subjects
from helpline.common.bus import Bus
from helpline.common.layout import BusLayout
from helpline.common.records import TERMINAL_STATUSES
from helpline.testing import HelplineUp

CONFIGS: dict[str, dict[str, str]] = {
    "off": {
        "HELPLINE_METRICS": "false",
        "HELPLINE_ACCESS_LOG": "false",
        "HELPLINE_TRACE_STORE": "false",
    },
    "no store": {"HELPLINE_TRACE_STORE": "false"},
    "default": {},
    "store 10%": {"HELPLINE_TRACE_STORE_RATIO": "0.1"},
    "spans on": {"OTEL_TRACES_SAMPLER": "always_on", "HELPLINE_TRACE_STORE": "false"},
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


async def pings(base_url: str, n: int, key: str) -> float:
    """N no-op pings over 64 keep-alive connections; tasks/s until every record is terminal."""
    started = time.perf_counter()
    ids = await submit_pings(base_url, n, CONNECTIONS, key=key)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30, headers=headers) as http:
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
        key = up.admin_key

        def ask(concurrency: int, n: int) -> dict[str, float]:
            load = query_load(up.url, concurrency, n, QUESTIONS, brand=BRAND, cache=False, key=key)
            return asyncio.run(load)

        assert up.process is not None
        ask(2, 20)  # warm: the model's first calls and first connections are not what users meet
        c1 = ask(1, requests)
        before = _tree_cpu_s(up.process.pid)
        c8 = ask(8, requests)
        query_cpu = _tree_cpu_s(up.process.pid) - before
        before = _tree_cpu_s(up.process.pid)
        rate = asyncio.run(pings(up.url, n_pings, key))
        ping_cpu = _tree_cpu_s(up.process.pid) - before
    return {
        "query_cpu_ms": query_cpu / requests * 1000,
        "ping_cpu_ms": ping_cpu / n_pings * 1000,
        "c1_p50": c1["p50"],
        "c1_p99": c1["p99"],
        "c8_p50": c8["p50"],
        "c8_p99": c8["p99"],
        "c8_qps": c8["qps"],
        "pings_per_s": rate,
    }


HTTP_ATTRIBUTES: dict[str, str | int] = {
    "http.scheme": "http",
    "http.host": "127.0.0.1:8080",
    "http.flavor": "1.1",
    "http.target": "/api/v1/query",
    "http.url": "http://127.0.0.1:8080/api/v1/query",
    "http.method": "POST",
    "http.server_name": "127.0.0.1:8080",
    "http.user_agent": "python-httpx/0.28.1",
    "net.peer.ip": "127.0.0.1",
    "net.peer.port": 48004,
    "http.route": "/api/v1/query",
    "http.status_code": 200,
}
CHILD_ATTRIBUTES: dict[str, str | int] = {
    "messaging.system": "nats",
    "messaging.destination.name": "helpline.tasks.query.critical",
    "helpline.task.id": "9de9c4eadc26dabd2cca2ba7fbccb3c8",
    "helpline.task.attempt": 1,
}


def _server_cpu_s(pid: int) -> float:
    """A process's user and system CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its descendants (helpline up, its gateway, its nats-server)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    tree, frontier = {pid}, [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        tree.update(children)
        frontier = children
    total = 0.0
    for member in tree:
        with contextlib.suppress(OSError):
            total += _server_cpu_s(member)
    return total


async def store_cost(n: int) -> None:
    """CPU per question-shaped trace: spans not recorded, recorded, recorded into the store."""
    with tempfile.TemporaryDirectory(prefix="helpline-store-cost-") as tmp:
        server = NatsServer(Path(tmp)).start()
        try:
            bus = Bus(BusLayout(prefix="bench"))
            await bus.connect(server.url, name="store-cost")
            await bus.bootstrap()
            print(f"{n} traces of 9 spans each; CPU per trace (this process; nats-server)")
            for name in ("not recorded", "recorded", "recorded + store"):
                provider = TracerProvider(
                    sampler=ALWAYS_OFF if name == "not recorded" else ALWAYS_ON
                )
                store = spanstore.SpanStore()
                if name.endswith("store"):
                    provider.add_span_processor(store)
                    store.attach(bus.nc, "bench")
                tracer = provider.get_tracer("helpline.bench")
                server_before = _server_cpu_s(server.pid)
                started = time.process_time()
                for i in range(n):
                    with tracer.start_as_current_span(
                        "POST /api/v1/query", kind=trace.SpanKind.SERVER, attributes=HTTP_ATTRIBUTES
                    ):
                        for j in range(8):
                            with tracer.start_as_current_span(
                                f"step {j}", attributes=CHILD_ATTRIBUTES
                            ):
                                pass
                    if i % 20 == 19:
                        await asyncio.sleep(0)  # the loop runs the store's sends as it would
                await store.detach(bus.nc)
                await bus.nc.flush()
                cpu_us = (time.process_time() - started) / n * 1e6
                server_us = (_server_cpu_s(server.pid) - server_before) / n * 1e6
                print(f"{name:>17}: {cpu_us:6.1f} us; nats-server {server_us:5.1f} us", flush=True)
            await asyncio.sleep(1.0)  # the server stores what it was sent
            info = await bus.js.stream_info(subjects.traces_stream("bench"))
            print(
                f"stored: {info.state.messages} messages, {(info.state.bytes or 0) / n:.0f} bytes a "
                f"trace (the store's 128 MiB: the last {128 * 2**20 // max(1, (info.state.bytes or 0) // n)} traces)"
            )
            await bus.close()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="a settled index to copy")
    parser.add_argument("--store-cost", type=int, default=0, help="traces (the store alone)")
    parser.add_argument("--requests", type=int, default=300, help="queries per concurrency")
    parser.add_argument("--pings", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help="which, comma-separated: " + ", ".join(CONFIGS).replace("%", "%%"),
    )
    args = parser.parse_args()
    if args.store_cost:
        printed = capture("telemetry")
        asyncio.run(store_cost(args.store_cost))
        printed.save()
        return
    if args.data_dir is None:
        raise SystemExit("--data-dir is required (or --store-cost)")
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    if "off" not in configs:
        raise SystemExit("--configs must include off (the baseline)")
    if not (args.data_dir / "qdrant").exists():
        raise SystemExit(f"no index in {args.data_dir}: run bench/query_latency.py --data-dir")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="helpline-telemetry-") as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(args.data_dir, data)
        for round_ in range(args.rounds):
            for name, config in configs.items():
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
    for name in configs:
        med = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
        print(
            f"{name:>9}: query c=1 p50 {med['c1_p50']:.1f} ms p99 {med['c1_p99']:.1f} ms | "
            f"c=8 p50 {med['c8_p50']:.1f} ms p99 {med['c8_p99']:.1f} ms {med['c8_qps']:.0f} q/s "
            f"({med['c8_qps'] / base['c8_qps'] - 1:+.1%}) | pings {med['pings_per_s']:.0f}/s "
            f"({med['pings_per_s'] / base['pings_per_s'] - 1:+.1%}) | CPU a question "
            f"{med['query_cpu_ms']:.2f} ms ({med['query_cpu_ms'] / base['query_cpu_ms'] - 1:+.1%}), "
            f"a ping {med['ping_cpu_ms']:.2f} ms ({med['ping_cpu_ms'] / base['ping_cpu_ms'] - 1:+.1%})"
        )
    printed.save()


if __name__ == "__main__":
    main()
