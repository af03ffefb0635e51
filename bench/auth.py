"""What API keys cost: requests through the auth and rate-limit path against the same routes
without it, in one run.

A real nats-server, the real `helpline up` (scraper, embedder, rag) on it, a settled index of
the PostgreSQL 15 manual (or `--site`) crawled through the API, and a gateway replica in this
process, served by uvicorn as `helpline run gateway` serves it (its logging, tracing and
metrics as deployed), so that the guard can be taken out. Three modes:

- `no auth`: in every route, the guard's dependency (`helpline.gateway.auth.GUARDS`, with
  the Authorization header's parsing under it) swapped for one that only leaves the key's
  record on the request (what the routes' brand checks read). Not FastAPI's
  `dependency_overrides`: while that dict is not empty, FastAPI rebuilds every dependency
  of every request from its signature (`get_dependant`), which cost the routes here a few
  hundred µs of CPU a request, more than the guard: a baseline slower than the real thing;
- `key, no limit`: a key with `rate_per_minute: 0`: the header parsed, the key hashed and
  looked up, its scope checked;
- `key, rate limit`: a key allowed 1,000,000 requests a minute (never refused here): the
  same, plus one compare-and-swap on the `rates` KV bucket per request.

Each mode sends the same header. The routes: `POST /api/v1/query` with distinct questions
(`"cache": false`, rag's embedding cache off: the model runs for each), and
`GET /api/v1/tasks/{id}` of an existing task, the cheapest guarded route, where the auth
cost is most visible; each at concurrency 1 and 8, from one load generator process
(bench/loadgen.py's connections, opened and warmed before each measurement is timed).
Rounds: each round measures every route and concurrency in the three modes back to back,
in an order rotated from round to round. Per measurement: requests per second, latency,
and the CPU spent per request by this process (the gateway), by `helpline up` (rag, the
model) and by nats-server. A mode's overhead is its difference to `no auth` in the same
round, the median over rounds: on a shared machine, neighbours move the figures of one
measurement more than auth does, and pairing by round cancels the slow drifts.

Then the same task read without the sockets, the load generator and uvicorn: the gateway's
ASGI app called in this process (`--asgi-reads` a measurement, one caller and eight at
once, the modes rotated, 5 rounds), wall and CPU µs a request of this process and of
nats-server. Nothing but the app runs in that loop, so the guard's cost (FastAPI solving
its dependencies, the header's parsing, the lookup, the compare-and-swap) stands out of
the noise a shared machine puts on the requests over HTTP; the guard is the same on every
route, so its cost on a question is this one.

    uv run python bench/auth.py [--rounds 8] [--queries 60] [--reads 300] [--max-pages 100]
        [--asgi-reads 1000] [--data-dir D] [--site FOLDER]

With `--data-dir`, the index is kept in D and reused by the next run (no crawl).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from loadgen import Connection, percentile
from pydantic import SecretStr
from query_latency import MANUAL, distinct_questions, wait_settled
from results import capture

from helpline.cli.natsserver import NatsServer, free_port
from helpline.common.observability import setup_logging, setup_tracing
from helpline.common.records import TERMINAL_STATUSES
from helpline.common.serving import run_until_signalled, serve
from helpline.common.serving.settings import ServingSettings
from helpline.common.vectors.edge import OPTIMIZE_QUIET_S
from helpline.embedder.app import MAINTAIN_EVERY_S
from helpline.gateway.app import GatewayComponent
from helpline.gateway.auth import GUARDS
from helpline.gateway.keys import ApiKey
from helpline.gateway.server import api_front
from helpline.gateway.settings import GatewaySettings
from helpline.testing import TEST_ADMIN_KEY, HelplineUp, bearer, serve_site_process

BRAND = "docs"
NO_AUTH, UNLIMITED, LIMITED = MODES = ("no auth", "key, no limit", "key, rate limit")
#: Never refused in this run (the most a key may have); a minute's worth may be spent at once.
HIGH_RATE = 1_000_000
CONCURRENCIES = (1, 8)
QUERY = "POST /api/v1/query"
READ = "GET /api/v1/tasks/{id}"

#: Per (route, concurrency, mode), one dict of figures per round.
Figures = dict[tuple[str, int, str], list[dict[str, float]]]


# --- the load generator (a process of its own) -----------------------------------------


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    """Open the connections, warm them, say `ready`, wait for `go`, run, return the figures."""
    concurrency: int = spec["concurrency"]
    questions: list[str] = list(spec["questions"])[::-1]
    connections = [Connection(spec["url"], key=spec["key"]) for _ in range(concurrency)]

    async def one(connection: Connection, into: list[float] | None) -> None:
        started = time.perf_counter()
        if spec["route"] == QUERY:
            body = {"question": questions.pop(), "brand": BRAND, "cache": False}
            await connection.post_json("/api/v1/query", body)
        else:
            await connection.request("GET", spec["path"])
        if into is not None:
            into.append((time.perf_counter() - started) * 1e6)

    await asyncio.gather(*(one(c, None) for c in connections))  # connected and warm
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    latencies: list[float] = []
    left = spec["requests"]

    async def client(connection: Connection) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one(connection, latencies)

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        await connection.close()
    return {
        "rps": len(latencies) / elapsed,
        "mean_us": statistics.fmean(latencies),
        "p50_us": percentile(latencies, 50),
        "p99_us": percentile(latencies, 99),
    }


async def serve_loads() -> None:
    """One measurement per spec line on stdin, until stdin closes."""
    while line := await asyncio.to_thread(sys.stdin.readline):
        print(json.dumps(await _load(json.loads(line))), flush=True)


# --- the system ------------------------------------------------------------------------


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds so far of `pid` (None: this process), to the nanosecond: the sum of its
    threads' schedstat run times (/proc's stat counts in ticks of 10 ms)."""
    if pid is None:
        return time.process_time()
    total = 0
    for thread in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((thread / "schedstat").read_text().split()[0])
        except OSError:
            continue  # the thread ended meanwhile
    return total / 1e9


def wait_task(client: httpx.Client, task_id: str, timeout_s: float = 1800.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}").json()
        if record["status"] in TERMINAL_STATUSES:
            return record
        time.sleep(0.5)
    raise SystemExit(f"task {task_id} did not finish in {timeout_s:.0f} s")


def make_key(client: httpx.Client, name: str, rate_per_minute: int) -> tuple[str, str]:
    """A key for every brand with the query and submit scopes: (its id, the key)."""
    body = {"name": name, "scopes": ["query", "submit"], "rate_per_minute": rate_per_minute}
    response = client.post("/api/v1/keys", json=body)
    response.raise_for_status()
    made = response.json()
    return made["id"], made["key"]


def prepare(up: HelplineUp, site: str, index: Path, max_pages: int, *, reuse: bool) -> str:
    """Crawl the site through the API unless `reuse`, then wait until the index settles;
    what the index holds, in words."""
    if reuse:
        print(f"reusing the index in {index}", flush=True)
        held = f"the index in {index}"
    else:
        with up.client() as client:
            body = {"url": f"{site}/index.html", "brand": BRAND, "max_pages": max_pages}
            response = client.post("/api/v1/crawl", json={**body, "max_depth": 10})
            response.raise_for_status()
            started = time.perf_counter()
            record = wait_task(client, response.json()["task_id"])
        result = record.get("result") or {}
        held = f"{result.get('pages_ok', 0)} pages, {result.get('chunks_indexed', 0)} chunks"
        print(
            f"crawled {held} in {time.perf_counter() - started:.0f} s; waiting for the vector "
            "index ...",
            flush=True,
        )
        # The embedder builds the vector index once writes have paused for OPTIMIZE_QUIET_S.
        time.sleep(OPTIMIZE_QUIET_S + MAINTAIN_EVERY_S + 5)
    wait_settled(index)
    return held


def open_door(key: ApiKey) -> Callable[..., Awaitable[None]]:
    """A guard that checks nothing: it leaves `key` where the routes' brand checks read it."""

    async def no_guard(request: Request) -> None:
        request.state.key = key

    return no_guard


class GuardSwitch:
    """Takes the guard out of every route of `app` and puts it back, in the dependency trees
    the routes serve requests with (no per-request cost either way)."""

    def __init__(self, app: FastAPI) -> None:
        guards = set(GUARDS.values())
        found: list[Dependant] = []
        # Each route as `app` serves it (an included router's routes are served by copies
        # holding dependency trees of their own).
        for route in iter_route_contexts(app.routes):
            dependant = getattr(route, "dependant", None)
            if isinstance(dependant, Dependant):
                found += [d for d in _tree(dependant) if d.call in guards]
        if not found:
            raise SystemExit("no route has a guard: helpline.gateway.auth.GUARDS is stale")
        self._saved = [(d, d.call, d.dependencies) for d in found]

    def off(self, door: Callable[..., Awaitable[None]]) -> None:
        for dependant, _, _ in self._saved:
            dependant.call = door
            dependant.dependencies = []  # the Authorization header's parsing

    def on(self) -> None:
        for dependant, call, dependencies in self._saved:
            dependant.call = call
            dependant.dependencies = dependencies


def _tree(dependant: Dependant) -> list[Dependant]:
    return [dependant, *(d for sub in dependant.dependencies for d in _tree(sub))]


class Bench:
    """The measurements, against the gateway replica this process serves."""

    def __init__(
        self,
        gateway: GatewayComponent,
        url: str,
        keys: dict[str, str],
        open_key_id: str,
        task_path: str,
        questions: list[str],
        pids: dict[str, int],
    ) -> None:
        self.gateway = gateway
        self.url = url
        self.keys = keys
        self.open_key_id = open_key_id
        self.task_path = task_path
        self.questions = questions
        #: Whose CPU is counted besides this process's: "up", "nats".
        self.pids = pids
        self._loader: asyncio.subprocess.Process | None = None
        self._switch = GuardSwitch(gateway.app)

    def open_key(self) -> ApiKey:
        assert self.gateway.keys is not None
        key = self.gateway.keys.get(self.open_key_id)
        assert key is not None
        return key

    def mode(self, name: str) -> None:
        if name == NO_AUTH:
            self._switch.off(open_door(self.open_key()))
        else:
            self._switch.on()

    def take(self, n: int) -> list[str]:
        if n > len(self.questions):
            raise RuntimeError("out of distinct questions")
        taken, self.questions = self.questions[:n], self.questions[n:]
        return taken

    async def start_loader(self) -> None:
        self._loader = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--load", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    async def stop_loader(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None and loader.stdin is not None:
            loader.stdin.close()
            await loader.wait()

    async def _said(self, line: bytes) -> bytes:
        assert self._loader is not None
        assert self._loader.stdin is not None
        assert self._loader.stdout is not None
        self._loader.stdin.write(line)
        await self._loader.stdin.drain()
        answer = await self._loader.stdout.readline()
        if not answer:
            raise SystemExit(f"the load generator ended ({await self._loader.wait()})")
        return answer

    def _cpu(self) -> dict[str, float]:
        return {"gateway": cpu_s()} | {name: cpu_s(pid) for name, pid in self.pids.items()}

    async def slot(self, mode: str, route: str, concurrency: int, n: int) -> dict[str, float]:
        """One measurement: n requests of `route` at `concurrency` in `mode`."""
        self.mode(mode)
        spec = {
            "url": self.url,
            # The same header in every mode: `no auth` sends the unlimited key, unread.
            "key": self.keys[LIMITED if mode == LIMITED else UNLIMITED],
            "route": route,
            "path": self.task_path,
            "concurrency": concurrency,
            "requests": n,
            "questions": self.take(n + concurrency) if route == QUERY else [],
        }
        if (await self._said(json.dumps(spec).encode() + b"\n")).strip() != b"ready":
            raise SystemExit("the load generator did not get ready")
        before = self._cpu()
        figures: dict[str, float] = json.loads(await self._said(b"go\n"))
        after = self._cpu()
        for name, spent in after.items():
            figures[f"{name}_cpu_us"] = (spent - before[name]) * 1e6 / n
        return figures

    async def verify(self, http: httpx.AsyncClient) -> None:
        """Each mode is what it says: without the guard a request with no key is served;
        with it, refused; only the limited key's answers carry RateLimit-* headers."""
        for mode, status in {NO_AUTH: 200, UNLIMITED: 401, LIMITED: 401}.items():
            self.mode(mode)
            got = (await http.get(self.task_path)).status_code
            if got != status:
                raise SystemExit(f"{mode}: a request without a key got {got}, not {status}")
        for mode in (UNLIMITED, LIMITED):
            self.mode(mode)
            answer = await http.get(self.task_path, headers=bearer(self.keys[mode]))
            answer.raise_for_status()
            if ("RateLimit-Limit" in answer.headers) != (mode == LIMITED):
                raise SystemExit(f"{mode}: RateLimit-Limit {answer.headers.get('RateLimit-Limit')}")

    async def asgi(self, reads: int, concurrency: int, mode: str) -> dict[str, float]:
        """`reads` task reads through the ASGI app in this process, `concurrency` at once:
        wall µs a read, CPU µs a read of this process and of nats-server."""
        self.mode(mode)
        key = self.keys[LIMITED if mode == LIMITED else UNLIMITED]
        app = self.gateway.app
        path = self.task_path
        headers = [(b"host", b"gateway"), (b"authorization", f"Bearer {key}".encode())]

        async def read() -> None:
            status = 0
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 80),
                "state": {},
            }

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]

            await app(scope, receive, send)
            if status != 200:
                raise SystemExit(f"{mode}: the app answered {status} to a task read")

        async def caller(n: int) -> None:
            for _ in range(n):
                await read()

        nats, cpu, started = cpu_s(self.pids["nats"]), cpu_s(), time.perf_counter()
        await asyncio.gather(*(caller(reads // concurrency) for _ in range(concurrency)))
        wall, spent = time.perf_counter() - started, cpu_s() - cpu
        nats = cpu_s(self.pids["nats"]) - nats
        done = reads // concurrency * concurrency
        return {k: v * 1e6 / done for k, v in {"wall": wall, "cpu": spent, "nats": nats}.items()}


def warm_count(n: int) -> int:
    """Requests of the warm-up (not counted) before measurements of `n`."""
    return max(20, n // 10)


def rotated(round_: int) -> tuple[str, ...]:
    return MODES[round_ % len(MODES) :] + MODES[: round_ % len(MODES)]


async def run_rounds(bench: Bench, args: argparse.Namespace) -> Figures:
    plan = [(route, c) for route in (QUERY, READ) for c in CONCURRENCIES]
    counts = {QUERY: args.queries, READ: args.reads}
    # Warm every path (the limiter's first read of its key, the model's first calls).
    for mode in MODES:
        for route, concurrency in plan:
            await bench.slot(mode, route, concurrency, warm_count(counts[route]))
    runs: Figures = {}
    for round_ in range(args.rounds):
        for route, concurrency in plan:
            for mode in rotated(round_):
                figures = await bench.slot(mode, route, concurrency, counts[route])
                runs.setdefault((route, concurrency, mode), []).append(figures)
        print(f"round {round_ + 1} of {args.rounds} done", flush=True)
    return runs


ASGI_ROUNDS = 5


async def run_asgi(bench: Bench, reads: int) -> Figures:
    figures: Figures = {}
    for mode in MODES:  # warm
        await bench.asgi(200, 8, mode)
    for round_ in range(ASGI_ROUNDS):
        for concurrency in CONCURRENCIES:
            for mode in rotated(round_):
                measured = await bench.asgi(reads, concurrency, mode)
                figures.setdefault(("asgi", concurrency, mode), []).append(measured)
    return figures


async def serve_and_measure(
    stop: asyncio.Event, settings: GatewaySettings, bench_args: dict[str, Any]
) -> tuple[Figures, Figures]:
    args: argparse.Namespace = bench_args.pop("args")
    gateway = GatewayComponent(settings)
    serving = asyncio.create_task(
        serve(settings, [gateway], name="gateway", stop=stop, front=api_front)
    )
    url = f"http://{settings.http_host}:{settings.http_port}"
    bench = Bench(gateway, url, **bench_args)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            for _ in range(600):
                if serving.done():
                    serving.result()
                if await _ready(http):
                    break
                await asyncio.sleep(0.1)
            else:
                raise SystemExit("the gateway in this process did not become ready")
            await bench.verify(http)
        await bench.start_loader()
        try:
            runs = await run_rounds(bench, args)
        finally:
            await bench.stop_loader()
        bench.mode(UNLIMITED)
        return runs, await run_asgi(bench, args.asgi_reads)
    finally:
        stop.set()
        await serving


async def _ready(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


# --- the report ------------------------------------------------------------------------


Runs = list[dict[str, float]]


def median(runs: Runs, k: str) -> float:
    return statistics.median(r[k] for r in runs)


def paired(runs: Runs, base: Runs, k: str, *, relative: bool = False) -> float:
    """The median over rounds of a figure's difference to the same round's `no auth`."""
    return statistics.median(
        (m[k] / b[k] - 1) if relative else (m[k] - b[k]) for m, b in zip(runs, base, strict=True)
    )


def report(runs: Figures, asgi: Figures, args: argparse.Namespace, index_note: str) -> None:
    print()
    print(
        f"{os.cpu_count()} cores; index of {index_note}; {args.rounds} rounds, modes back to "
        f"back in an order rotated each round; {args.queries} questions (distinct, answer "
        f"cache off) and {args.reads} task reads per measurement; medians over rounds; "
        "Δ: to `no auth` in the same round; CPU µs per request: the gateway, and all of "
        "gateway + helpline up (rag) + nats-server"
    )
    head = (
        f"{'route':<23}{'c':>2}  {'mode':<16}{'req/s':>7}{'Δ req/s':>9}{'mean ms':>9}"
        f"{'p99 ms':>8}{'Δ mean latency':>19}{'gw CPU':>8}{'Δ gw CPU':>16}{'all CPU':>9}"
        f"{'Δ all CPU':>17}"
    )
    print(head)
    print("-" * len(head))
    for route in (QUERY, READ):
        for concurrency in CONCURRENCIES:
            base = runs[(route, concurrency, NO_AUTH)]
            for mode in MODES:
                mine = [
                    {**r, "all_cpu_us": r["gateway_cpu_us"] + r["up_cpu_us"] + r["nats_cpu_us"]}
                    for r in runs[(route, concurrency, mode)]
                ]
                base_all = [
                    {**r, "all_cpu_us": r["gateway_cpu_us"] + r["up_cpu_us"] + r["nats_cpu_us"]}
                    for r in base
                ]
                rps = latency = cpu = cpu_all = ""
                if mode != NO_AUTH:
                    rps = f"{paired(mine, base, 'rps', relative=True):+.1%}"
                    latency = _delta(mine, base, "mean_us")
                    cpu = _delta(mine, base, "gateway_cpu_us")
                    cpu_all = _delta(mine, base_all, "all_cpu_us")
                print(
                    f"{route:<23}{concurrency:>2}  {mode:<16}{median(mine, 'rps'):>7.0f}{rps:>9}"
                    f"{median(mine, 'mean_us') / 1000:>9.2f}{median(mine, 'p99_us') / 1000:>8.2f}"
                    f"{latency:>19}{median(mine, 'gateway_cpu_us'):>8.0f}{cpu:>16}"
                    f"{median(mine, 'all_cpu_us'):>9.0f}{cpu_all:>17}"
                )
    print()
    print(
        f"{READ} through the ASGI app in this process (no sockets, no uvicorn), "
        f"{args.asgi_reads} reads a measurement, median of {ASGI_ROUNDS} rounds: µs a read "
        "(8 at once: the wall time over the reads, the inverse of reads a second)"
    )
    cost: dict[tuple[int, str], tuple[float, float]] = {}
    for concurrency in CONCURRENCIES:
        base = asgi[("asgi", concurrency, NO_AUTH)]
        for mode in MODES:
            mine = asgi[("asgi", concurrency, mode)]
            both = [{"v": r["cpu"] + r["nats"], "wall": r["wall"]} for r in mine]
            base_both = [{"v": r["cpu"] + r["nats"], "wall": r["wall"]} for r in base]
            cost[(concurrency, mode)] = (
                paired(both, base_both, "wall"),
                paired(both, base_both, "v"),
            )
            line = (
                f"  {concurrency} at once, {mode:<16} wall {median(mine, 'wall'):7.1f}, "
                f"CPU {median(mine, 'cpu'):6.1f} + nats-server {median(mine, 'nats'):5.1f}"
            )
            if mode != NO_AUTH:
                wall, cpu_us = cost[(concurrency, mode)]
                line += f"; Δ wall {wall:+6.1f}, Δ CPU {cpu_us:+6.1f}"
            print(line)
    question = runs[(QUERY, 1, NO_AUTH)]
    latency_us = median(question, "mean_us")
    all_cpu_us = median(
        [{"v": r["gateway_cpu_us"] + r["up_cpu_us"] + r["nats_cpu_us"]} for r in question], "v"
    )
    for mode in (UNLIMITED, LIMITED):
        wall, cpu_us = cost[(1, mode)]
        print(
            f"{QUERY}, {mode}: the guard's {wall:.0f} µs are {wall / latency_us:.2%} of a "
            f"question's {latency_us / 1000:.1f} ms; its {cpu_us:.0f} µs CPU (gateway + "
            f"nats-server) {cpu_us / all_cpu_us:.2%} of the {all_cpu_us / 1000:.1f} ms a "
            "question costs all processes (goal < 5%)"
        )


def _delta(mine: Runs, base: Runs, k: str) -> str:
    return f"{paired(mine, base, k):+.0f} µs {paired(mine, base, k, relative=True):+.1%}"


def main() -> None:
    if "--load" in sys.argv[1:]:
        asyncio.run(serve_loads())
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the three modes")
    parser.add_argument("--queries", type=int, default=60, help="questions per measurement")
    parser.add_argument("--reads", type=int, default=300, help="task reads per measurement")
    parser.add_argument("--asgi-reads", type=int, default=1000, help="per ASGI measurement")
    parser.add_argument("--max-pages", type=int, default=100, help="pages of the site to index")
    parser.add_argument("--site", type=Path, default=None, help="HTML folder (default: manual)")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the index here; reuse it")
    args = parser.parse_args()

    site_root = args.site or MANUAL
    if not site_root.joinpath("index.html").exists():
        raise SystemExit(f"no site at {site_root}: install postgresql-doc-15 or pass --site")
    # Per mode and concurrency: the warm-up's and each round's questions, and one more per
    # connection for each measurement's own warm-up.
    wanted = len(MODES) * sum(
        (args.rounds + 1) * c + warm_count(args.queries) + args.rounds * args.queries
        for c in CONCURRENCIES
    )
    questions = distinct_questions(site_root, wanted)
    print(f"{wanted} distinct questions made from {site_root}", flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="helpline-bench-auth-") as tmp,
        serve_site_process(site_root) as site,
    ):
        data = args.data_dir or Path(tmp) / "data"
        index = data / "qdrant" / "helpline"
        reuse = index.is_dir() and any(index.iterdir())
        nats = NatsServer(Path(tmp) / "nats").start()
        try:
            env = {
                "HELPLINE_NATS_URL": nats.url,
                "HELPLINE_ADMIN_KEY": TEST_ADMIN_KEY,
                "HELPLINE_UP_OWN_PROCESSES": "[]",  # its gateway only crawls; ours is measured
                "HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1",
                "HELPLINE_LOG_LEVEL": "WARNING",
                "HELPLINE_RAG_EMBEDDING_CACHE": "0",
            }
            with HelplineUp(data, env) as up:
                assert up.process is not None
                held = prepare(up, site, index, args.max_pages, reuse=reuse)
                with up.client() as client:
                    open_id, open_key = make_key(client, "bench: no limit", 0)
                    _, limited_key = make_key(client, "bench: rate limit", HIGH_RATE)
                    ping = client.post("/api/v1/maintenance/ping", json={})
                    ping.raise_for_status()
                    task_id = ping.json()["task_id"]
                    wait_task(client, task_id)
                settings = GatewaySettings(
                    nats_url=nats.url,
                    admin_key=SecretStr(TEST_ADMIN_KEY),
                    data_dir=Path(tmp) / "gateway",
                    http_host="127.0.0.1",
                    http_port=free_port(),
                    log_level="WARNING",
                )
                setup_logging(settings.log_level, json_lines=settings.log_json)
                setup_tracing(
                    settings.otel_service_name or "helpline-gateway",
                    otlp_endpoint=settings.otlp_endpoint,
                    record=settings.otel_traces_sampler is not None,
                    store=settings.trace_store_on,
                    store_ratio=settings.trace_store_ratio,
                )
                bench_args = {
                    "args": args,
                    "keys": {UNLIMITED: open_key, LIMITED: limited_key},
                    "open_key_id": open_id,
                    "task_path": f"/api/v1/tasks/{task_id}",
                    "questions": questions,
                    "pids": {"up": up.process.pid, "nats": nats.pid},
                }
                measured: list[tuple[Figures, Figures]] = []

                async def measure(stop: asyncio.Event) -> None:
                    measured.append(await serve_and_measure(stop, settings, bench_args))

                run_until_signalled(measure, ServingSettings().event_loop)
        finally:
            nats.stop()
    runs, asgi = measured[0]
    printed = capture("auth")
    report(runs, asgi, args, f"{site_root}: {held}")
    printed.save()


if __name__ == "__main__":
    main()
