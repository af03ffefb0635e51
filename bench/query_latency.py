"""Query latency and crawl-to-searchable time on a real documentation corpus, with distinct questions.

Serves the PostgreSQL 15 manual (Debian's postgresql-doc-15, installed here if missing
and possible) on 127.0.0.1, runs the real `helpline up` in a fresh data dir, crawls the
manual through the API, waits until the vector index has settled (no optimization running),
then measures `POST /api/v1/query` at concurrency 1 and 8 with the answer cache bypassed
(`"cache": false`). Every question is asked once in the whole run: they are generated from
the manual (its section headings and sentences, rephrased by templates), so neither the
answer cache nor rag's question-embedding LRU ever helps; the model runs for each. Beside
each latency, the CPU each process spent per question: `helpline up`'s own (scraper,
embedder, rag), the gateway's, nats-server's, and this load generator's. Then cache hits
(a few questions asked again and again, so that every answer is cached).

Last, a question asked while the embedder optimizes a large index: the index's points are
copied into a shard that was never optimized, `helpline up` starts on it (the embedder builds
the vector index at once, in a child process), and distinct questions are asked at
concurrency 1 while that runs; then after it was swapped in. Beside it, in this process,
the way it ran before: Edge's own optimize called in a thread of the process that searches.

    uv run python bench/query_latency.py [--max-pages 1200] [--requests 500] [--data-dir D]
        [--also-one-process] [--also-env KEY=VALUE ...] [--no-optimize-probe]

With `--data-dir`, the index is kept in D and reused by the next run (no crawl).
`--also-one-process` adds a run with every service in `helpline up`'s one process
(HELPLINE_UP_OWN_PROCESSES=[]) rather than the gateway in a process of its own;
`--also-env` a run with other settings (e.g. HELPLINE_EMBED_THREADS=1), each with questions of
its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import lxml.html
import qdrant_edge as edge
from loadgen import Connection, percentile, query_load
from results import capture

from helpline.common.lexical import SparseVector
from helpline.common.records import TERMINAL_STATUSES
from helpline.common.vectors import EdgeStore, IndexedPoint
from helpline.common.vectors.edge import OPTIMIZE_QUIET_S
from helpline.embedder.app import MAINTAIN_EVERY_S
from helpline.testing import HelplineUp, serve_site

MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
#: The brand the manual is indexed under (shared with retrieval_eval: one index serves both).
BRAND = "docs"
#: Asked again and again for the cache-hit runs only.
CACHED_QUESTIONS = [
    "How do I create a new database?",
    "How can I make a backup of my database?",
    "What does VACUUM do and when should I run it?",
    "How do I give a user permission to read a table?",
    "What isolation levels does PostgreSQL support?",
    "How do I change the port the server listens on?",
    "How do I restore a dump made with pg_dump?",
    "How do I set up streaming replication to a standby?",
]

HEADING_TEMPLATES = (
    "What is {}?",
    "How do I use {}?",
    "Can you explain {}?",
    "Where does the manual describe {}?",
    "What should I know about {}?",
    "How does {} work in PostgreSQL?",
    "Is there an example of {}?",
    "What are the options for {}?",
)
SENTENCE_TEMPLATES = (
    "Is it true that {}?",
    "Why is it that {}?",
    "Does the manual say that {}?",
    "Can you confirm that {}?",
)
#: While the index is optimized: a question every 50 ms, at most this many.
PROBE_EVERY_S = 0.05
PROBE_QUESTIONS = 3_000
_NUMBERING = re.compile(r"^(?:Chapter|Part|Appendix)?\s*[A-Z]?[\dIVXL]+(?:\.\d+)*\.?\s+")


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


def distinct_questions(manual: Path, count: int, seed: int = 18) -> list[str]:
    """`count` different questions made from the manual's headings and sentences, shuffled."""
    rng = random.Random(seed)
    made: dict[str, str] = {}

    def add(question: str) -> None:
        made.setdefault(" ".join(question.lower().split()), question)

    for page in sorted(manual.glob("*.html")):
        root = lxml.html.parse(str(page)).getroot()
        for heading in root.iter("h1", "h2", "h3", "h4"):
            text = _NUMBERING.sub("", " ".join(heading.text_content().split()))
            if 4 <= len(text) <= 80:
                add(rng.choice(HEADING_TEMPLATES).format(text))
        for paragraph in root.iter("p"):
            sentence = " ".join(paragraph.text_content().split()).split(". ")[0]
            if sentence.endswith(":") or "§" in sentence:
                continue  # an example or a release note's references follow
            sentence = sentence.rstrip(".?!")
            if 40 <= len(sentence) <= 110 and sentence[:1].isupper():
                # "The server ..." -> "the server ...", but "SQL ..." stays.
                if not sentence[1:2].isupper():
                    sentence = sentence[0].lower() + sentence[1:]
                add(rng.choice(SENTENCE_TEMPLATES).format(sentence))
    questions = list(made.values())
    if len(questions) < count:
        sys.exit(f"only {len(questions)} distinct questions in {manual}, {count} wanted")
    rng.shuffle(questions)
    return questions[:count]


class Questions:
    """Hands out questions, each once."""

    def __init__(self, questions: list[str]) -> None:
        self._left = list(questions)

    def take(self, n: int) -> list[str]:
        if n > len(self._left):
            raise RuntimeError("out of distinct questions")
        taken, self._left = self._left[:n], self._left[n:]
        return taken


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found + [g for c in found for g in _children(c)]


def process_cpu(up_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of `helpline up`'s process and its children, by role."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: dict[str, float] = {}
    for pid in [up_pid, *_children(up_pid)]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if pid == up_pid:
            role = "helpline up"
        elif b"nats-server" in command:
            role = "nats-server"
        elif b"gateway" in command:
            role = "gateway"
        else:
            role = "other children"
        seconds[role] = seconds.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    own = os.times()
    seconds["load generator"] = own.user + own.system
    return seconds


def measure(
    up: HelplineUp, concurrency: int, questions: list[str], *, cache: bool = False
) -> dict[str, float]:
    """Latency figures, and CPU ms per question of each process (keys `cpu:<role>`)."""
    assert up.process is not None
    before = process_cpu(up.process.pid)
    figures = asyncio.run(
        query_load(
            up.url,
            concurrency,
            len(questions),
            questions,
            brand=BRAND,
            cache=cache,
            key=up.admin_key,
        )
    )
    after = process_cpu(up.process.pid)
    for role, spent in after.items():
        figures[f"cpu:{role}"] = (spent - before.get(role, 0.0)) * 1000 / len(questions)
    return figures


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


def optimizing(index: Path) -> bool:
    """Whether the embedder is building the vector index (its copy of the shard exists)."""
    return index.with_name(f"{index.name}.optimizing").exists()


def wait_settled(index: Path, timeout_s: float = 900.0) -> None:
    deadline = time.monotonic() + timeout_s
    while optimizing(index):
        if time.monotonic() > deadline:
            sys.exit("the vector index did not settle")
        time.sleep(1.0)


def ask(up: HelplineUp, questions: list[str]) -> None:
    with up.client() as client:
        for question in questions:
            client.post(
                "/api/v1/query", json={"question": question, "brand": BRAND, "cache": False}
            )


def unoptimized_copy(index: Path, target: Path) -> int:
    """Write every point of `index` into a new shard at `target`, never optimized."""
    source = EdgeStore(index, 384)
    copy = EdgeStore(target, 384)
    copy.ensure_collection()
    offset = None
    count = 0
    while True:
        records, offset = source._shard.scroll(
            edge.ScrollRequest(offset=offset, limit=512, with_payload=True, with_vector=True)
        )
        points = []
        for record in records:
            dense, sparse = _vectors(record)
            points.append(IndexedPoint(str(record.id), dense, record.payload or {}, sparse))
        copy.upsert(points)
        count += len(points)
        if offset is None:
            break
    source.close()
    copy.close()
    return count


def _vectors(record: Any) -> tuple[list[float], SparseVector | None]:
    """A stored point's dense and sparse vectors."""
    vectors = record.vector or {}
    sparse = vectors.get("lexical")
    lexical = SparseVector(list(sparse.indices), list(sparse.values)) if sparse else None
    return vectors[""], lexical


def probe_while_optimizing(
    probe_data: Path, env: dict[str, str], questions: Questions
) -> tuple[list[float], list[float], str]:
    """Distinct questions at concurrency 1 while the embedder optimizes, then after the swap."""
    index = probe_data / "qdrant" / "helpline"
    during: list[float] = []
    after: list[float] = []
    with HelplineUp(probe_data, {**env, "HELPLINE_LOG_LEVEL": "INFO"}) as up:

        async def run() -> None:
            connection = Connection(up.url, key=up.admin_key)
            try:
                while optimizing(index) and len(during) < PROBE_QUESTIONS:
                    if not _rebuilding(up):
                        # The copy is optimized: leave a lull for the swap (a load of the
                        # optimized shard), as there are between customers' questions; the
                        # gateway closes a connection idle for 5 s.
                        await connection.close()
                        await asyncio.sleep(0.2)
                        continue
                    started = time.perf_counter()
                    await _timed(connection, questions.take(1)[0], during)
                    await asyncio.sleep(max(0.0, PROBE_EVERY_S - (time.perf_counter() - started)))
                for question in questions.take(200):
                    await _timed(connection, question, after)
            finally:
                await connection.close()

        asyncio.run(run())
        up.stop()
    log = up.log_path.read_text(errors="replace")
    swapped = [line for line in log.splitlines() if "vector index optimized" in line]
    return during, after, (swapped[-1] if swapped else "no swap logged")


def _rebuilding(up: HelplineUp) -> bool:
    assert up.process is not None
    for pid in _children(up.process.pid):
        try:
            if b"optimize()" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


async def _timed(connection: Connection, question: str, into: list[float]) -> None:
    started = time.perf_counter()
    await connection.post_json(
        "/api/v1/query", {"question": question, "brand": BRAND, "cache": False}
    )
    into.append((time.perf_counter() - started) * 1000)


def in_process_optimize_peer(probe_index: Path, work: Path) -> tuple[list[float], float]:
    """How it ran before: Edge's optimize in a thread of the process that searches.

    A hybrid search (a stored point's own vectors) is due every 10 ms while it runs; each
    one's latency counts from when it was due, so time spent waiting for the interpreter
    lock before it could even start counts too.
    """
    copy = work / "peer"
    shutil.copytree(probe_index, copy)
    store = EdgeStore(copy, 384)
    records, _ = store._shard.scroll(
        edge.ScrollRequest(limit=400, with_payload=False, with_vector=True)
    )
    queries = [_vectors(record) for record in records]
    latencies: list[float] = []
    done = threading.Event()
    took: list[float] = []

    def optimize() -> None:
        started = time.perf_counter()
        store._shard.optimize()
        took.append(time.perf_counter() - started)
        done.set()

    thread = threading.Thread(target=optimize)
    started = time.perf_counter()
    thread.start()
    i = 0
    while not done.is_set():
        due = started + i * 0.01
        time.sleep(max(0.0, due - time.perf_counter()))
        vector, sparse = queries[i % len(queries)]
        store.search(vector, 5, BRAND, sparse)
        latencies.append((time.perf_counter() - due) * 1000)
        i += 1
    thread.join()
    store.close()
    return latencies, took[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-pages", type=int, default=1200)
    parser.add_argument("--requests", type=int, default=500, help="questions at concurrency 1")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the index here; reuse it")
    parser.add_argument(
        "--also-one-process",
        action="store_true",
        help="also measure with every service in `helpline up`'s one process",
    )
    parser.add_argument(
        "--also-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also measure concurrency 1 and 8 with these settings (repeatable: one run)",
    )
    parser.add_argument("--no-optimize-probe", action="store_true")
    args = parser.parse_args()

    manual = ensure_manual()
    also_env = dict(item.split("=", 1) for item in args.also_env)
    peers = int(args.also_one_process) + int(bool(also_env))
    wanted = 20 + (1 + peers) * 3 * args.requests
    wanted += 0 if args.no_optimize_probe else PROBE_QUESTIONS + 200
    questions = Questions(distinct_questions(manual, wanted))
    print(f"{wanted} distinct questions made from {manual}", flush=True)
    runs: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="helpline-bench-") as tmp, serve_site(manual) as site:
        data = args.data_dir or Path(tmp) / "data"
        index = data / "qdrant" / "helpline"
        reuse = index.is_dir() and any(index.iterdir())
        env = {"HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1", "HELPLINE_LOG_LEVEL": "WARNING"}
        with HelplineUp(data, env) as up, up.client() as client:
            if reuse:
                print(f"reusing the index in {index}", flush=True)
                crawl_s = None
                pages = 0
                result: dict = {}
            else:
                print(f"crawling {site} (max {args.max_pages} pages) ...", flush=True)
                record, crawl_s = crawl(client, site, args.max_pages)
                result = record.get("result") or {}
                pages = result.get("pages_ok", 0)
                # The embedder builds the vector index once writes have paused for
                # OPTIMIZE_QUIET_S; measure the index as it serves from then on.
                print("waiting for the vector index to be built ...", flush=True)
                time.sleep(OPTIMIZE_QUIET_S + MAINTAIN_EVERY_S + 5)
            wait_settled(index)
            ask(up, questions.take(20))  # warm-up
            runs.append(("concurrency 1", measure(up, 1, questions.take(args.requests))))
            runs.append(("concurrency 8", measure(up, 8, questions.take(2 * args.requests))))
            settled = not optimizing(index)
            for question in CACHED_QUESTIONS:  # every answer cached
                client.post("/api/v1/query", json={"question": question, "brand": BRAND})
            hits = CACHED_QUESTIONS * (2 * args.requests // len(CACHED_QUESTIONS))
            runs.append(("cache hit, concurrency 1", measure(up, 1, hits, cache=True)))
            runs.append(("cache hit, concurrency 8", measure(up, 8, hits * 2, cache=True)))
        if args.also_one_process:
            one = {**env, "HELPLINE_UP_OWN_PROCESSES": "[]"}
            with HelplineUp(data, one) as up:
                ask(up, questions.take(10))
                for concurrency, n in ((1, args.requests), (8, 2 * args.requests - 10)):
                    figures = measure(up, concurrency, questions.take(n))
                    runs.append((f"all in one process, concurrency {concurrency}", figures))
        if also_env:
            with HelplineUp(data, {**env, **also_env}) as up:
                ask(up, questions.take(10))
                named = " ".join(args.also_env)
                for concurrency, n in ((1, args.requests), (8, 2 * args.requests - 10)):
                    figures = measure(up, concurrency, questions.take(n))
                    runs.append((f"{named}, concurrency {concurrency}", figures))
        store = EdgeStore(index, 384)
        chunks = store.count(BRAND)
        store.close()
        probe = None
        if not args.no_optimize_probe:
            probe_data = Path(tmp) / "probe"
            copied = unoptimized_copy(index, probe_data / "qdrant" / "helpline")
            peer, peer_s = in_process_optimize_peer(probe_data / "qdrant" / "helpline", Path(tmp))
            during, after, swapped = probe_while_optimizing(probe_data, env, questions)
            probe = (copied, peer, peer_s, during, after, swapped)

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
    print(
        f"cache off: every question distinct ({(1 + peers) * 3 * args.requests} asked, from the manual's "
        f"headings and sentences); no optimization running before or after: {settled}"
    )
    print(f"load average when done: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, figures in runs:
        print(
            f"POST /api/v1/query {name}: p50 {figures['p50']:.1f} ms, p95 {figures['p95']:.1f} ms, "
            f"p99 {figures['p99']:.1f} ms, mean {figures['mean']:.1f} ms, {figures['qps']:.1f} queries/s "
            f"(gateway-measured p50 {figures['server_p50']:.1f} ms)"
        )
        cpu = {k[4:]: v for k, v in figures.items() if k.startswith("cpu:")}
        served = sum(v for k, v in cpu.items() if k != "load generator")
        print(
            f"  CPU ms per question: {served:.2f} served ("
            + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if k != "load generator")
            + f"); load generator {cpu.get('load generator', 0.0):.2f}"
        )
    if probe is not None:
        copied, peer, peer_s, during, after, swapped = probe
        print(f"a question while the embedder optimizes {copied} points never optimized:")
        print(
            f"  before (Edge's optimize in a thread of the searching process, {peer_s:.1f} s): "
            f"a search due every 10 ms: {len(peer)} done, p50 {percentile(peer, 50):.1f} ms, "
            f"max {max(peer):.0f} ms from when it was due"
        )
        print(
            f"  now, during the child's optimize: {len(during)} questions (concurrency 1), "
            f"p50 {percentile(during, 50):.1f} ms, p99 {percentile(during, 99):.1f} ms, "
            f"max {max(during, default=0):.0f} ms"
        )
        print(
            f"  after the swap: {len(after)} questions, p50 {percentile(after, 50):.1f} ms, "
            f"p99 {percentile(after, 99):.1f} ms"
        )
        print(f"  embedder log: {swapped.strip()[-160:]}")
    printed.save()


if __name__ == "__main__":
    main()
