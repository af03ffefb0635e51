"""Replicas add capacity: pages a minute crawled with 1, 2, 4 and 8 scraper processes, on a
site whose every page takes a fixed time to answer (so fetching, not CPU, bounds one
replica), with the per-host politeness measured across all of them.

A real nats-server, the real `helpline up` (its own scraper, embedder, rag, maintenance,
the gateway apart) and `helpline run scraper` processes beside it, all against the same
bus; every scraper fetches `--concurrency` pages at once. The site is generated and served
from this process (`--pages` pages in a tree, each answering after `--delay-ms`), and it
records when each request arrived, so the gaps between requests to the host are measured
at the site, across every replica. Each step crawls a part of the site no earlier step
crawled (nothing is a re-fetch), through `POST /api/v1/crawl`, timed until the crawl's
record is terminal (every page fetched, extracted, embedded, indexed).

The ceiling: with `HELPLINE_SCRAPER_HOST_INTERVAL_S` (`--interval-s`) between two requests
to one host, across replicas, no number of replicas crawls one host faster than
1 / interval pages a second: the table shows replicas adding capacity up to it, and the
gaps show the politeness holding at it.

    uv run python bench/scale.py [--pages 120] [--delay-ms 500] [--concurrency 2]
        [--interval-s 0.1] [--replicas 1,2,4,8] [--plot bench/results/scale.png]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from results import capture

from helpline.cli.natsserver import NatsServer, free_port
from helpline.testing import HelplineUp, ServiceProcess

FANOUT = 12


class Site:
    """`/s<step>/p<n>.html`: page n links to pages FANOUT*n+1 .. FANOUT*n+FANOUT of its step."""

    def __init__(self, pages: int, delay_s: float) -> None:
        self.pages, self.delay_s = pages, delay_s
        self.arrivals: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def page(self, step: str, n: int) -> bytes:
        children = range(FANOUT * n + 1, min(self.pages, FANOUT * n + FANOUT + 1))
        links = "".join(f'<li><a href="/{step}/p{c}.html">Topic {c}</a></li>' for c in children)
        body = (
            f"<p>Section {n} of the {step} guide explains setting number {n}: set it to "
            f"{n * 7} for a small office and to {n * 11} for a large one, then save.</p>"
        ) * 3
        return (
            f"<!doctype html><html><head><title>Guide {step} page {n}</title></head><body>"
            f"<main><h1>Guide {step}, page {n}</h1>{body}<ul>{links}</ul></main></body></html>"
        ).encode()


@contextmanager
def serve(site: Site) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with site.lock:
                site.arrivals.append((time.monotonic(), self.path))
            parts = self.path.strip("/").split("/")
            if self.path == "/robots.txt" or len(parts) != 2 or not parts[1].startswith("p"):
                self.send_error(404)
                return
            time.sleep(site.delay_s)
            n = int(parts[1][1:].removesuffix(".html") or 0)
            data = site.page(parts[0], n)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def crawl(client: httpx.Client, url: str, pages: int) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    accepted = client.post(
        "/api/v1/crawl",
        json={"url": url, "brand": "scale", "max_pages": pages, "max_depth": 10},
    )
    accepted.raise_for_status()
    task_id = accepted.json()["task_id"]
    while True:
        record = client.get(f"/api/v1/tasks/{task_id}").json()
        if record["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return time.monotonic() - started, record
        time.sleep(0.1)


def plot(rows: list[dict[str, float]], ceiling: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    replicas = [r["replicas"] for r in rows]
    axes.plot(replicas, [r["pages_per_min"] for r in rows], marker="o", label="measured")
    one = rows[0]["pages_per_min"]
    axes.plot(replicas, [one * n for n in replicas], linestyle=":", label="linear from 1")
    axes.axhline(ceiling, color="grey", linestyle="--", label="politeness ceiling, one host")
    axes.set_xscale("log", base=2)
    axes.set_xticks(replicas, [str(int(n)) for n in replicas])
    axes.set_xlabel("scraper processes")
    axes.set_ylabel("pages a minute (crawl done, indexed)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=120, help="pages a step crawls")
    parser.add_argument("--delay-ms", type=float, default=500)
    parser.add_argument("--concurrency", type=int, default=2, help="fetches at once a replica")
    parser.add_argument("--interval-s", type=float, default=0.1, help="per-host interval")
    parser.add_argument("--replicas", default="1,2,4,8")
    parser.add_argument(
        "--plot", type=Path, default=Path(__file__).parent / "results" / "scale.png"
    )
    args = parser.parse_args()
    steps = [int(n) for n in args.replicas.split(",")]
    site = Site(args.pages, args.delay_ms / 1000)
    env = {
        "HELPLINE_LOG_LEVEL": "WARNING",
        "HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1",
        "HELPLINE_SCRAPER_CONCURRENCY": str(args.concurrency),
        "HELPLINE_SCRAPER_HOST_INTERVAL_S": str(args.interval_s),
        "HELPLINE_SCRAPER_EXTRACT_PROCESSES": "0",
        "HELPLINE_SCRAPER_OBEY_ROBOTS": "false",
    }
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="helpline-scale-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        url = stack.enter_context(serve(site))
        server = stack.enter_context(NatsServer(root / "nats"))
        env["HELPLINE_NATS_URL"] = server.url
        up = stack.enter_context(HelplineUp(root / "up", env))
        client = stack.enter_context(up.client())
        extra: list[ServiceProcess] = []
        for replicas in steps:
            while len(extra) < replicas - 1:  # up hosts the first scraper
                index = len(extra)
                extra.append(
                    stack.enter_context(
                        ServiceProcess("scraper", server.url, root / f"scraper{index}", env)
                    )
                )
            time.sleep(2)  # every replica's pull requests in place
            first = len(site.arrivals)
            took, record = crawl(client, f"{url}/r{replicas}/p0.html", args.pages)
            arrivals = site.arrivals[first:]
            # Between page requests (the crawl's sitemap probe is not a page).
            pages = [t for t, path in arrivals if path.endswith(".html")]
            gaps = sorted(b - a for a, b in itertools.pairwise(pages))
            result = record.get("result") or {}
            ok = float(result.get("pages_ok", 0)) if isinstance(result, dict) else 0.0
            row = {
                "replicas": float(replicas),
                "pages": ok,
                "seconds": took,
                "pages_per_min": ok / took * 60,
                "min_gap_ms": gaps[0] * 1000 if gaps else 0.0,
                "p5_gap_ms": gaps[len(gaps) // 20] * 1000 if gaps else 0.0,
                "median_gap_ms": gaps[len(gaps) // 2] * 1000 if gaps else 0.0,
                "requests": float(len(arrivals)),
            }
            rows.append(row)
            print(f"{replicas} scraper(s): {row}", flush=True)
    printed = capture("scale")
    ceiling = 60 / args.interval_s
    print()
    print(
        f"one host, every page answering after {args.delay_ms:.0f} ms; {args.concurrency} "
        f"fetches at once per scraper; host interval {args.interval_s} s across replicas "
        f"(ceiling {ceiling:.0f} pages a minute); {args.pages} pages a crawl, timed to indexed"
    )
    print(
        "| scrapers | pages | seconds | pages a minute | vs 1 | gap between page requests: "
        "shortest, 5th percentile, median |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['replicas']:.0f} | {row['pages']:.0f} | {row['seconds']:.1f} | "
            f"{row['pages_per_min']:.0f} | {row['pages_per_min'] / rows[0]['pages_per_min']:.2f}x "
            f"| {row['min_gap_ms']:.0f} / {row['p5_gap_ms']:.0f} / {row['median_gap_ms']:.0f} ms |"
        )
    plot(rows, ceiling, args.plot)
    print(f"plot: {args.plot}")
    printed.save()


if __name__ == "__main__":
    main()
