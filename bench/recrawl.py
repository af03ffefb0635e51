"""What a re-crawl costs (issue 19): nothing changed, then 1% of the pages changed.

Copies the PostgreSQL 15 manual (Debian's postgresql-doc-15) to a temporary folder served on
127.0.0.1, runs `helpline up`, crawls it to `--depth` links from index.html through the API
(every page within it: the same pages each time), then crawls
them again unchanged, then again after changing 1% of the crawled pages on disk (a sentence
added to each). For each crawl: wall time, pages fetched in full and answered 304 (from the
pages' task results), chunks embedded.

    uv run python bench/recrawl.py [--depth 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from helpline.testing import HelplineUp, serve_site_process

sys.path.insert(0, str(Path(__file__).parent))
from query_latency import ensure_manual

TERMINAL = {"succeeded", "failed", "expired", "cancelled"}


def crawl(client: httpx.Client, site: str, depth: int) -> dict[str, Any]:
    started = time.perf_counter()
    body = {"url": f"{site}/index.html", "brand": "pg", "max_pages": 10_000, "max_depth": depth}
    response = client.post("/api/v1/crawl", json=body)
    response.raise_for_status()
    task_id = response.json()["task_id"]
    while (record := client.get(f"/api/v1/tasks/{task_id}").json())["status"] not in TERMINAL:
        time.sleep(0.2)
    wall_s = time.perf_counter() - started
    children: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"parent": task_id, "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        listed = client.get("/api/v1/tasks", params=params)
        body_ = listed.json()
        items = body_["items"] if isinstance(body_, dict) else body_
        children += items
        cursor = listed.headers.get("x-next-cursor") or (
            body_.get("next_cursor") if isinstance(body_, dict) else None
        )
        if not cursor:
            break
    results = [c.get("result") or {} for c in children]
    return {
        "status": record["status"],
        "wall_s": round(wall_s, 1),
        "pages": len(children),
        "not_modified": sum(1 for r in results if r.get("not_modified")),
        "fetched_in_full": sum(1 for r in results if r and not r.get("not_modified")),
        "embedded": sum(int(r.get("embedded", 0)) for r in results),
        "chunks": sum(int(r.get("chunks_indexed", 0)) for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=1)
    args = parser.parse_args()
    manual = ensure_manual()
    with tempfile.TemporaryDirectory() as tmp:
        site_dir = Path(tmp) / "manual"
        shutil.copytree(manual, site_dir)
        old = time.time() - 3600
        for path in site_dir.rglob("*"):
            os.utime(path, (old, old))
        env = {"HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1", "HELPLINE_LOG_LEVEL": "WARNING"}
        with (
            serve_site_process(site_dir) as site,
            HelplineUp(Path(tmp) / "data", env) as up,
            up.client() as client,
        ):
            first = crawl(client, site, args.depth)
            print("first crawl:", first, flush=True)
            unchanged = crawl(client, site, args.depth)
            print("re-crawl, nothing changed:", unchanged, flush=True)
            documents = client.get("/api/v1/documents", params={"limit": 1000}).json()["items"]
            step = max(1, round(100 / 1))  # 1%: every 100th crawled page
            changed = documents[::step]
            now = time.time()
            for document in changed:
                path = site_dir / document["url"].split("/", 3)[3]
                text = path.read_text(errors="replace")
                # In the first paragraph: main content, so its chunk changes.
                path.write_text(text.replace("</p>", " Changed for the re-crawl bench.</p>", 1))
                os.utime(path, (now, now))
            changed_run = crawl(client, site, args.depth)
            print(f"re-crawl, {len(changed)} pages changed:", changed_run, flush=True)


if __name__ == "__main__":
    main()
