"""Memory of every process while a real manual is crawled, indexed and queried.

Serves the PostgreSQL 15 manual on 127.0.0.1 and crawls it through the API, either under
`helpline up` (`--mode up`: its process, the gateway child, nats-server, the extraction
processes, a browser if one starts) or with every service apart (`--mode apart`: our
nats-server and `helpline run <service>` for each, embedder and rag each on a Qdrant Edge
of its own, so rag's index is empty there: it still embeds every question). Every second
it reads each process's RSS, anonymous RSS (/proc/PID/status) and PSS
(/proc/PID/smaps_rollup); processes of one role (the extraction workers, a browser's
processes) are added up. After each crawl round it waits for the vector index to be built
and asks 16 questions of many lengths; then the memory held is "steady" (the median of the last 15 s of a
quiet minute). Prints per role: the peak of the 1 s samples, the kernel's high-water mark
(VmHWM, which no sample can miss), and the steady figure after each round; writes a PNG.

    uv run python bench/memory.py [--mode up|apart] [--rounds 2] [--max-pages 1200]
        [--data-dir /work/benchdata/mem-x] [--plot PATH] [--label TEXT] [--set K=V ...]

Each round crawls the manual under a brand of its own (mem1, mem2, ...), so each round
embeds and writes every chunk again and the index grows by the manual each time: steady
figures that stay put over rounds show memory bounded by design, not by what is indexed.
The data dir (a temporary one unless given) must be fresh or belong to this bench.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from results import capture

from helpline.cli.natsserver import NatsServer
from helpline.common.records import TERMINAL_STATUSES
from helpline.common.vectors.edge import OPTIMIZE_QUIET_S
from helpline.embedder.app import MAINTAIN_EVERY_S
from helpline.testing import TEST_ADMIN_KEY, HelplineUp, ServiceProcess, bearer, serve_site

MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
SERVICES = ("gateway", "scraper", "embedder", "rag", "maintenance")
#: Questions of many lengths: each new length is a new input shape for rag's model.
QUESTIONS = [
    "VACUUM?",
    "What is a tablespace?",
    "How do I create a new database?",
    "How can I make a backup of my database while it is running?",
    "What isolation levels does PostgreSQL support and how do they differ from each other?",
    "How do I give a user permission to read every table in a schema, including tables "
    "created later by another role?",
    "How do I set up streaming replication to a hot standby server in another data centre, "
    "and how do I check that the standby keeps up with the primary under a heavy write load?",
    "Which configuration parameters limit how much memory a sort, a hash join and a "
    "maintenance command such as CREATE INDEX or VACUUM may use, and how do work_mem, "
    "maintenance_work_mem and hash_mem_multiplier interact when many sessions run at once?",
    "How do I partition a large table by date?",
    "How do I copy data from a CSV file into a table?",
    "What does the error 'duplicate key value violates unique constraint' mean?",
    "How does point-in-time recovery work?",
    "How do I write a function in PL/pgSQL that returns a set of rows?",
    "What are common table expressions (WITH queries), and can they be recursive?",
    "How do I enable SSL connections and require them for remote clients only?",
    "How can I check the size of a table on disk, with and without its indexes and TOAST data?",
]
#: The window at the end of a quiet period whose median is the steady figure.
STEADY_WINDOW_S = 15
MB = 1024 * 1024


# --- reading /proc ---------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(roots: list[int]) -> list[int]:
    """The roots and every process below them."""
    tree = _children()
    found: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += tree.get(pid, [])
    return found


def role(pid: int, roots: dict[int, str]) -> str | None:
    """What a process is: a root's name, nats-server, extraction, browser, or None (gone)."""
    if pid in roots:
        return roots[pid]
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as raw:
            args = [a.decode(errors="replace") for a in raw.read().split(b"\0") if a]
    except OSError:
        return None
    line = " ".join(args)
    if not args:
        return None
    if "nats-server" in args[0]:
        return "nats-server"
    if "run" in args[:-1]:  # `helpline run <service>`, as `helpline up` starts its children
        return args[args.index("run") + 1]
    if "qdrant_edge" in line:  # the child that builds the vector index on a copy
        return "index build"
    if "multiprocessing" in line:
        return "extraction"
    if any(name in line for name in ("chrome", "chromium", "headless_shell")):
        return "browser"
    return Path(args[0]).name


@dataclass
class Reading:
    rss: int = 0
    anon: int = 0
    pss: int = 0
    hwm: int = 0
    count: int = 0

    def add(self, other: Reading) -> None:
        self.rss += other.rss
        self.anon += other.anon
        self.pss += other.pss
        self.hwm += other.hwm
        self.count += other.count


def read_process(pid: int) -> Reading | None:
    reading = Reading(count=1)
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    reading.rss = int(value.split()[0]) * 1024
                elif key == "RssAnon":
                    reading.anon = int(value.split()[0]) * 1024
                elif key == "VmHWM":
                    reading.hwm = int(value.split()[0]) * 1024
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    reading.pss = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        return None
    return reading if reading.rss else None


# --- sampling --------------------------------------------------------------------------


@dataclass
class Sampler:
    """Samples every process under `roots` once a second, in a thread."""

    roots: dict[int, str] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    samples: list[dict[str, Reading]] = field(default_factory=list)
    #: Per role, the highest VmHWM seen of any one of its processes.
    hwm: dict[str, int] = field(default_factory=dict)
    marks: list[tuple[float, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sample(self) -> None:
        by_role: dict[str, Reading] = {}
        for pid in descendants(list(self.roots)):
            name = role(pid, self.roots)
            reading = read_process(pid) if name else None
            if name is None or reading is None:
                continue
            by_role.setdefault(name, Reading()).add(reading)
            self.hwm[name] = max(self.hwm.get(name, 0), reading.hwm)
        with self._lock:
            self.times.append(time.monotonic() - self.started)
            self.samples.append(by_role)

    def mark(self, label: str) -> None:
        with self._lock:
            self.marks.append((time.monotonic() - self.started, label))
        print(f"[{time.monotonic() - self.started:6.0f} s] {label}", flush=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(max(0.0, 1.0 - (time.monotonic() - self.started) % 1.0)):
            self.sample()

    def roles(self) -> list[str]:
        seen: dict[str, int] = {}
        for sample in self.samples:
            for name, reading in sample.items():
                seen[name] = max(seen.get(name, 0), reading.rss)
        return sorted(seen, key=lambda name: -seen[name])

    def series(self, name: str, what: str = "rss") -> list[float]:
        return [getattr(s[name], what) / MB if name in s else 0.0 for s in self.samples]

    def peak(self, name: str, what: str = "rss") -> float:
        return max(self.series(name, what), default=0.0)

    def steady(self, name: str, until: float, what: str = "rss") -> float:
        """The median over the `STEADY_WINDOW_S` seconds before `until`."""
        values = [
            getattr(s[name], what) / MB
            for t, s in zip(self.times, self.samples, strict=True)
            if until - STEADY_WINDOW_S <= t <= until and name in s
        ]
        return statistics.median(values) if values else 0.0


# --- the system under test -------------------------------------------------------------


#: What a system yields: the gateway's URL, the root processes by pid, the admin key.
System = tuple[str, dict[int, str], str]


@contextlib.contextmanager
def helpline_up(data: Path, env: dict[str, str]) -> Iterator[System]:
    with HelplineUp(data, env) as up:
        assert up.process is not None
        yield up.url, {up.process.pid: "helpline up"}, up.admin_key


@contextlib.contextmanager
def services_apart(data: Path, env: dict[str, str]) -> Iterator[System]:
    with NatsServer(data / "nats") as nats, contextlib.ExitStack() as stack:
        roots = {nats.pid: "nats-server"}
        gateway = ""
        for service in SERVICES:
            own = {**env, "HELPLINE_ADMIN_KEY": TEST_ADMIN_KEY} if service == "gateway" else env
            process = stack.enter_context(ServiceProcess(service, nats.url, data / service, own))
            roots[process.pid] = service
            if service == "gateway":
                gateway = f"http://127.0.0.1:{process.port}"
        yield gateway, roots, TEST_ADMIN_KEY


def crawl(client: httpx.Client, site: str, brand: str, max_pages: int) -> dict:
    body = {"url": f"{site}/index.html", "brand": brand, "max_pages": max_pages, "max_depth": 10}
    response = client.post("/api/v1/crawl", json=body)
    response.raise_for_status()
    task_id = response.json()["task_id"]
    while True:
        record = client.get(f"/api/v1/tasks/{task_id}").json()
        if record["status"] in TERMINAL_STATUSES:
            return dict(record.get("result") or {})
        time.sleep(1.0)


def ask_all(client: httpx.Client, brand: str) -> int:
    answered = 0
    for question in QUESTIONS:
        body = {"question": question, "brand": brand, "cache": False}
        answered += client.post("/api/v1/query", json=body).status_code == 200
    return answered


# --- the report ------------------------------------------------------------------------


def report(sampler: Sampler, rounds: list[tuple[str, float]], mode: str, label: str) -> None:
    names = sampler.roles()
    print(f"\n{label or mode}: memory per process (MB; a role's processes added up)")
    head = f"{'process':<14}{'n':>3}{'peak RSS':>10}{'VmHWM':>8}{'peak PSS':>10}{'peak anon':>11}"
    head += "".join(f"{'steady ' + r:>16}" for r, _ in rounds)
    print(head)
    for name in names:
        count = max((s[name].count for s in sampler.samples if name in s), default=0)
        line = (
            f"{name:<14}{count:>3}{sampler.peak(name):>10.0f}{sampler.hwm.get(name, 0) / MB:>8.0f}"
            f"{sampler.peak(name, 'pss'):>10.0f}{sampler.peak(name, 'anon'):>11.0f}"
        )
        line += "".join(f"{sampler.steady(name, at):>16.0f}" for _, at in rounds)
        print(line)
    totals = [sum(s[n].pss for n in s) / MB for s in sampler.samples]
    steady_total = [
        statistics.median(
            [
                total
                for t, total in zip(sampler.times, totals, strict=True)
                if at - STEADY_WINDOW_S <= t <= at
            ]
            or [0.0]
        )
        for _, at in rounds
    ]
    print(
        f"{'all (PSS)':<14}{'':>3}{max(totals, default=0):>10.0f}{'':>8}{'':>10}{'':>11}"
        + "".join(f"{v:>16.0f}" for v in steady_total)
    )
    print(
        "steady: RSS, median of the last 15 s of a quiet minute after the round's crawl and questions"
    )


def plot(sampler: Sampler, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_pss) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for name in sampler.roles():
        ax_rss.plot(sampler.times, sampler.series(name), label=name, linewidth=1.2)
        ax_pss.plot(sampler.times, sampler.series(name, "pss"), label=name, linewidth=1.2)
    for ax, what in ((ax_rss, "RSS (MB)"), (ax_pss, "PSS (MB)")):
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        for at, text in sampler.marks:
            ax.axvline(at, color="grey", linewidth=0.6, linestyle=":")
            if ax is ax_rss:
                short = text.split(":")[0].split(" (")[0]
                ax.annotate(short, (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                            rotation=90, va="top", ha="right", color="grey")  # fmt: skip
    ax_rss.legend(fontsize=8, loc="upper left")
    ax_pss.set_xlabel("seconds")
    ax_rss.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("up", "apart"), default="up")
    parser.add_argument("--rounds", type=int, default=1, help="crawls, each under a new brand")
    parser.add_argument("--max-pages", type=int, default=1200)
    parser.add_argument("--data-dir", type=Path, default=None, help="a fresh folder to index into")
    parser.add_argument("--quiet-s", type=float, default=60.0, help="quiet time after a round")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: in the data dir)")
    parser.add_argument("--label", default="", help="what this run is, for the report")
    parser.add_argument("--set", nargs="*", default=[], metavar="K=V", help="extra environment")
    args = parser.parse_args()

    if not MANUAL.joinpath("index.html").exists():
        raise SystemExit(f"no manual at {MANUAL}: install Debian's postgresql-doc-15")
    manual = MANUAL
    env = {"HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1", "HELPLINE_LOG_LEVEL": "WARNING"}
    env.update(pair.split("=", 1) for pair in args.set)
    system = helpline_up if args.mode == "up" else services_apart
    rounds: list[tuple[str, float]] = []
    with contextlib.ExitStack() as stack:
        data = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory())) / "d"
        if data.exists() and any(data.iterdir()) and not (data / ".memory-bench").exists():
            raise SystemExit(f"{data} is not empty and not this bench's: choose a fresh folder")
        data.mkdir(parents=True, exist_ok=True)
        (data / ".memory-bench").touch()
        site = stack.enter_context(serve_site(manual))
        url, roots, key = stack.enter_context(system(data, env))
        sampler = stack.enter_context(Sampler(roots=roots).running())
        client = stack.enter_context(httpx.Client(base_url=url, timeout=60, headers=bearer(key)))
        time.sleep(STEADY_WINDOW_S + 2)
        rounds.append(("start", time.monotonic() - sampler.started))
        for number in range(1, args.rounds + 1):
            brand = f"mem{number}"
            sampler.mark(f"crawl {number}")
            result = crawl(client, site, brand, args.max_pages)
            sampler.mark(
                f"crawled {number}: {result.get('pages_ok', 0)} pages, "
                f"{result.get('chunks_indexed', 0)} chunks"
            )
            # The embedder builds the vector index once writes have paused.
            time.sleep(OPTIMIZE_QUIET_S + MAINTAIN_EVERY_S + 5)
            sampler.mark(f"questions {number}")
            answered = ask_all(client, brand)
            sampler.mark(f"quiet {number} ({answered}/{len(QUESTIONS)} answered)")
            time.sleep(args.quiet_s)
            rounds.append((f"round {number}", time.monotonic() - sampler.started))
        plot_path = args.plot or data / f"memory-{args.mode}.png"

    printed = capture("memory")
    print(f"mode {args.mode}: {'helpline up' if args.mode == 'up' else 'every service apart'}, "
          f"{args.rounds} round(s) of the PostgreSQL 15 manual (max {args.max_pages} pages)")  # fmt: skip
    print(f"load average when done: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for at, text in sampler.marks:
        print(f"  {at:6.0f} s  {text}")
    report(sampler, rounds, args.mode, args.label)
    printed.save()
    plot(sampler, plot_path, f"{args.label or args.mode}: memory per process")


if __name__ == "__main__":
    main()
