"""The `helpline` CLI as a script runs it: each command a subprocess against one real
`helpline up` (module-scoped) and a local site; `--json` output parsed, exit codes checked
(0 done, 1 task failed, 2 bad input, 3 gateway unreachable, 4 not allowed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from helpline.cli.natsserver import free_port
from helpline.testing import HelplineUp, serve_site, slow_route

pytestmark = pytest.mark.slow

HELPLINE = str(Path(sys.executable).parent / "helpline")
SITE = Path(__file__).parent / "site"
ENV = {
    "HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1",
    "HELPLINE_LOG_JSON": "false",
    # The slow page times out twice and is dead-lettered, within seconds.
    "HELPLINE_SCRAPER_TIMEOUT_S": "1",
    "HELPLINE_MAX_DELIVER": "2",
    "HELPLINE_BACKOFF_BASE_S": "0.2",
}


class Run:
    """A finished `helpline` command: exit code, stdout, stderr."""

    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.code = done.returncode
        self.out = done.stdout
        self.err = done.stderr

    def json(self) -> Any:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"exit {self.code}\nstdout: {self.out[-2000:]}\nstderr: {self.err[-2000:]}"


def helpline(*args: str, env: dict[str, str]) -> Run:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HELPLINE_")}
    done = subprocess.run(
        [HELPLINE, *args],
        env={**clean, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Run(done)


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with serve_site(SITE, routes={"/troubleshooting/slow.html": slow_route(3.0)}) as url:
        yield url


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HelplineUp]:
    with HelplineUp(tmp_path_factory.mktemp("cli") / "data", ENV) as running:
        yield running


@pytest.fixture(scope="module")
def env(up: HelplineUp) -> dict[str, str]:
    """The gateway's URL; the key is the admin key `helpline up` left in the data dir."""
    return {"HELPLINE_API_URL": up.url, "HELPLINE_DATA_DIR": str(up.data_dir)}


def cli(env: dict[str, str], *args: str) -> Run:
    return helpline(*args, env=env)


@pytest.fixture(scope="module")
def crawled(env: dict[str, str], site: str) -> tuple[Run, str]:
    """The site crawled with the progress bar, as a person runs it; and its task id."""
    run = cli(env, "crawl", f"{site}/index.html", "--brand", "acme", "--max-pages", "12")
    tasks = cli(env, "tasks", "--kind", "crawl", "--json").json()
    return run, tasks[0]["task_id"]


def test_help_states_exit_codes_and_environment() -> None:
    run = helpline("--help", env={})
    assert run.code == 0, run
    for words in ("Exit codes", "3 the gateway cannot be reached", "HELPLINE_API_URL", "dlq"):
        assert words in run.out, run


def test_a_gateway_that_is_down_is_exit_3_in_one_line() -> None:
    down = {"HELPLINE_API_URL": f"http://127.0.0.1:{free_port()}", "HELPLINE_API_KEY": "hl_x"}
    for args in (("tasks",), ("ask", "anything"), ("scrape", "http://a.example/", "--brand", "a")):
        run = helpline(*args, env=down)
        assert run.code == 3, run
        assert "cannot reach the gateway" in run.err, run
        assert "Traceback" not in run.err, run
        assert len(run.err.strip().splitlines()) == 1, run
        assert run.out == "", run


def test_crawl_shows_progress_and_ends_with_a_summary(
    env: dict[str, str], crawled: tuple[Run, str]
) -> None:
    run, crawl_id = crawled
    assert run.code == 0, run
    record = cli(env, "task", crawl_id, "--json").json()
    assert record["status"] == "succeeded"
    done, total = record["progress"]["done"], record["progress"]["total"]
    assert done == total > 1
    # The bar (stderr) reached the end; the summary (stdout) counts the pages.
    assert f"{total}/{total}" in run.err, run
    result = record["result"]
    assert f"crawl {crawl_id} succeeded: {result['pages_ok']} pages indexed" in run.out, run
    # The slow page failed, and the summary says why.
    assert result["pages_failed"] >= 1
    assert "timed out" in run.out, run
    # The human view of the same task.
    shown = cli(env, "task", crawl_id)
    assert shown.code == 0, shown
    assert "succeeded" in shown.out, shown
    assert f"{total}/{total}" in shown.out, shown


def test_scrape_waits_and_a_failed_task_is_exit_1(env: dict[str, str], site: str) -> None:
    run = cli(env, "scrape", f"{site}/privacy.html", "--brand", "acme", "--json")
    assert run.code == 0, run
    record = run.json()
    assert record["kind"] == "scrape"
    assert record["status"] == "succeeded"
    assert record["result"]["chunks_indexed"] > 0
    # A page that is not there: the task fails, and the summary says why.
    missing = cli(env, "scrape", f"{site}/no-such-page.html", "--brand", "acme")
    assert missing.code == 1, missing
    assert " failed: " in missing.out, missing
    assert "404" in missing.out, missing
    # --no-wait: the 202, at once.
    queued = cli(env, "scrape", f"{site}/terms.html", "--brand", "acme", "--no-wait", "--json")
    assert queued.code == 0, queued
    assert set(queued.json()) >= {"task_id", "status", "status_url"}


def test_bad_input_is_exit_2_naming_the_field(env: dict[str, str]) -> None:
    run = cli(env, "scrape", "not a url", "--brand", "no spaces", "--json")
    assert run.code == 2, run
    assert run.out == ""
    assert "422" in run.err, run
    assert "url:" in run.err, run
    assert "brand:" in run.err, run
    limit = cli(env, "tasks", "--limit", "0")
    assert limit.code == 2, limit
    assert "limit:" in limit.err, limit
    unknown = cli(env, "task", "no-such-task")
    assert unknown.code == 2, unknown
    assert "404" in unknown.err, unknown
    # A usage error is bad input too.
    assert cli(env, "crawl", "http://a.example/").code == 2


def test_a_wrong_key_is_exit_4(env: dict[str, str]) -> None:
    run = cli({**env, "HELPLINE_API_KEY": "hl_" + "x" * 43}, "tasks")
    assert run.code == 4, run
    assert "not allowed: 401" in run.err, run
    assert "HELPLINE_API_KEY" in run.err, run


def test_ask_streams_the_answer_then_its_sources(
    env: dict[str, str], site: str, crawled: tuple[Run, str]
) -> None:
    assert cli(env, "cache", "clear").code == 0
    question = "What does error FW-409 mean?"
    run = cli(env, "ask", question, "--brand", "acme")
    assert run.code == 0, run
    answer = cli(env, "ask", question, "--brand", "acme", "--json").json()
    assert answer["cached"] is True  # the streamed answer was cached
    # The streamed text, then [1] and the first source's URL.
    assert run.out.startswith(answer["answer"]), run
    assert "FW-409" in run.out
    assert f"[1] {answer['sources'][0]['title']}" in run.out, run
    assert answer["sources"][0]["url"].startswith(site)
    assert answer["sources"][0]["url"] in run.out
    assert " ms" in run.out.splitlines()[-1]
    # The cache: one answer in it, then cleared.
    stats = cli(env, "cache", "stats", "--json").json()
    assert stats["entries"] >= 1
    assert stats["hits"] >= 1
    cleared = cli(env, "cache", "clear", "--json").json()
    assert cleared["cleared"] >= 1
    assert cli(env, "cache", "stats", "--json").json()["entries"] == 0
    human = cli(env, "cache", "stats")
    assert human.code == 0, human
    assert "hit rate" in human.out, human


def test_batch_tasks_and_cancel(env: dict[str, str], site: str, tmp_path: Path) -> None:
    pages = [f"{site}/{p}" for p in ("terms.html", "privacy.html", "index.html")]
    # A batch that waits a minute between its pages: listed, then cancelled while it waits.
    options = ("--brand", "acme", "--max-concurrent", "1", "--delay-ms", "60000")
    slow = cli(env, "batch", *pages, *options, "--no-wait", "--json")
    assert slow.code == 0, slow
    batch_id = slow.json()["task_id"]
    listed = cli(env, "tasks", "--kind", "scrape", "--json").json()
    assert batch_id in [t["task_id"] for t in listed]
    cancelled = cli(env, "cancel", batch_id, "--json")
    assert cancelled.code == 0, cancelled
    assert cancelled.json()["status"] == "cancelled"
    again = cli(env, "cancel", batch_id)
    assert again.code == 2, again
    assert "409" in again.err, again
    waited = cli(env, "task", batch_id, "--wait", "--json")
    assert waited.code == 1, waited
    assert waited.json()["status"] == "cancelled", waited
    table = cli(env, "tasks", "--status", "cancelled")
    assert table.code == 0, table
    assert batch_id in table.out, table
    # A batch from a file that runs: its bar to the end, then the summary.
    listing = tmp_path / "urls.txt"
    listing.write_text(f"{pages[0]}\n\n{pages[1]}\n")
    run = cli(env, "batch", "--file", str(listing), "--brand", "acme", "--max-concurrent", "2")
    assert run.code == 0, run
    assert "2/2" in run.err, run
    assert " succeeded: 2 pages indexed, 0 failed" in run.out, run


def test_embed_text(env: dict[str, str]) -> None:
    text = "Night mode dims every light on the X200 after 22:00."
    run = cli(env, "embed", text, "--brand", "acme", "--title", "Night mode", "--json")
    assert run.code == 0, run
    record = run.json()
    assert record["kind"] == "embed"
    assert record["status"] == "succeeded"
    assert record["result"]["pages_ok"] == 1


def test_queues_workers_and_status(env: dict[str, str]) -> None:
    queues = cli(env, "queues", "--json").json()
    assert {"kind", "priority", "pending", "in_flight"} <= set(queues[0])
    workers = cli(env, "workers", "--json").json()
    services = {w["service"] for w in workers}
    assert {"scraper", "embedder", "rag"} <= services, services
    human = cli(env, "workers")
    assert human.code == 0, human
    assert "scraper" in human.out, human
    assert "concurrency" in human.out, human
    status = cli(env, "status", "--json")
    view = status.json()
    assert view["bus"]["streams_present"] is True
    assert status.code == (0 if view["status"] == "ok" else 1), status
    shown = cli(env, "status")
    assert view["status"] in shown.out, shown
    assert "pending" in shown.out, shown
    assert cli(env, "breakers", "--json").code == 0


def test_dead_letters_are_listed_and_replayed(
    env: dict[str, str], site: str, crawled: tuple[Run, str]
) -> None:
    slow = f"{site}/troubleshooting/slow.html"

    def slow_letters() -> list[dict[str, Any]]:
        letters = cli(env, "dlq", "list", "--kind", "scrape", "--json").json()
        return [d for d in letters if isinstance(d["task"], dict) and d["task"]["url"] == slow]

    deadline = time.monotonic() + 30
    while not (letters := slow_letters()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert letters, "the crawl's slow page was not dead-lettered"
    dead = letters[0]["task_id"]
    human = cli(env, "dlq", "list")
    assert human.code == 0, human
    assert dead in human.out, human
    assert "timed out" in human.out, human
    replay = cli(env, "dlq", "replay", dead, "--json")
    assert replay.code == 0, replay
    accepted = replay.json()
    assert accepted["replay_of"] == dead
    assert accepted["task_id"] != dead
    assert cli(env, "task", accepted["task_id"], "--json").json()["kind"] == "scrape"
    assert dead not in [d["task_id"] for d in slow_letters()]
    gone = cli(env, "dlq", "replay", dead)
    assert gone.code == 2, gone
    assert "404" in gone.err, gone


def test_sources(env: dict[str, str], site: str, crawled: tuple[Run, str]) -> None:
    # `crawled`: the site's pages are indexed, so deleting a source of one folder removes some.
    url = f"{site}/terms.html"
    add = ("sources", "add", url, "--brand", "acme", "--max-pages", "1")
    made = cli(env, *add, "--refresh-s", "3600", "--json")
    assert made.code == 0, made
    source = made.json()
    assert source["url"] == url
    assert source["refresh_s"] == 3600
    listed = cli(env, "sources", "list", "--json").json()
    assert source["id"] in [s["id"] for s in listed["items"]]
    changed = cli(env, "sources", "update", source["id"], "--refresh-s", "7200", "--json")
    assert changed.code == 0, changed
    assert changed.json()["refresh_s"] == 7200, changed
    shown = cli(env, "sources", "show", source["id"])
    assert shown.code == 0, shown
    assert url in shown.out, shown
    assert "2.0 h" in shown.out, shown
    table = cli(env, "sources", "list", "--brand", "acme")
    assert source["id"] in table.out, table
    too_often = cli(env, *add, "--refresh-s", "5")
    assert too_often.code == 2, too_often
    assert "refresh_s:" in too_often.err, too_often
    # Deleted, its pages (the whole site's, under its folder) kept.
    kept = cli(env, "sources", "delete", source["id"], "--keep-documents")
    assert kept.code == 0, kept
    assert ": 0 documents (0 chunks) out of the index" in kept.out, kept
    missing = cli(env, "sources", "show", source["id"])
    assert missing.code == 2, missing
    assert "404" in missing.err, missing
    # A source of one folder, deleted with its pages.
    wifi = f"{site}/config/wifi.html"
    config = cli(env, "sources", "add", wifi, "--brand", "acme", "--refresh-s", "3600", "--json")
    deleted = cli(env, "sources", "delete", config.json()["id"], "--json")
    assert deleted.code == 0, deleted
    assert deleted.json()["documents_removed"] >= 1
    left = cli(env, "documents", "list", "--brand", "acme", "--json").json()["items"]
    assert not [d for d in left if "/config/" in d["url"]]
    assert left


def test_documents(env: dict[str, str], site: str, crawled: tuple[Run, str]) -> None:
    listed = cli(env, "documents", "list", "--brand", "acme", "--json").json()
    urls = [d["url"] for d in listed["items"]]
    assert f"{site}/index.html" in urls
    assert all(d["brand"] == "acme" and d["chunks"] > 0 for d in listed["items"])
    # Two at a time, every page of the listing: the same documents.
    paged = cli(env, "documents", "list", "--brand", "acme", "--limit", "2", "--all", "--json")
    assert [d["url"] for d in paged.json()["items"]] == urls
    one = cli(env, "documents", "list", "--brand", "acme", "--limit", "1")
    assert one.code == 0, one
    assert urls[0] in one.out, one
    assert "--cursor" in one.out, one
    # One document: by id and by URL, its lineage and its Markdown; then taken out.
    privacy = next(d for d in listed["items"] if d["url"] == f"{site}/privacy.html")
    detail = cli(env, "documents", "show", privacy["id"], "--json").json()
    assert detail["url"] == privacy["url"]
    assert "indexed" in [step["step"] for step in detail["lineage"]]
    by_url = cli(env, "documents", "show", "--url", privacy["url"], "--json").json()
    assert by_url["id"] == privacy["id"]
    text = cli(env, "documents", "show", privacy["id"], "--markdown")
    assert text.code == 0, text
    assert text.out.strip() == (detail["markdown"] or "").strip()
    assert text.out.strip()
    shown = cli(env, "documents", "show", privacy["id"])
    assert shown.code == 0, shown
    assert "fetched" in shown.out, shown
    assert privacy["url"] in shown.out, shown
    both = cli(env, "documents", "show", privacy["id"], "--url", privacy["url"])
    assert both.code == 2, both
    removed = cli(env, "documents", "delete", privacy["id"], "--json")
    assert removed.code == 0, removed
    assert removed.json()["status"] == "removed"
    assert removed.json()["chunks_removed"] == privacy["chunks"]
    gone = cli(env, "documents", "show", privacy["id"])
    assert gone.code == 2, gone
    assert "404" in gone.err, gone


def test_keys(env: dict[str, str]) -> None:
    made = cli(env, "keys", "create", "agent desk", "--scope", "query", "--brand", "acme", "--json")
    assert made.code == 0, made
    key = made.json()
    assert key["scopes"] == ["query"]
    assert key["brands"] == ["acme"]
    assert key["key"]
    listed = cli(env, "keys", "list", "--json").json()
    assert key["id"] in [k["id"] for k in listed]
    assert all("key" not in k for k in listed)
    table = cli(env, "keys", "list")
    assert "agent desk" in table.out, table
    # The new key may read documents but not tasks (403: exit 4).
    as_agent = {**env, "HELPLINE_API_KEY": key["key"]}
    assert cli(as_agent, "documents", "list", "--json").code == 0
    forbidden = cli(as_agent, "tasks")
    assert forbidden.code == 4, forbidden
    assert "403" in forbidden.err, forbidden
    assert cli(env, "keys", "revoke", key["id"]).code == 0
    assert key["id"] not in [k["id"] for k in cli(env, "keys", "list", "--json").json()]
    revoked = cli(as_agent, "documents", "list")
    assert revoked.code == 4, revoked
    assert "401" in revoked.err, revoked


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on loopback: its URL, and the deliveries it got (204 to each)."""
    got: list[dict[str, Any]] = []

    class Receive(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append({"headers": dict(self.headers), "body": json.loads(body)})
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Receive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_webhooks(env: dict[str, str], receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = receiver
    made = cli(env, "webhooks", "add", url, "--event", "task.failed", "--brand", "acme", "--json")
    assert made.code == 0, made
    webhook = made.json()
    assert webhook["events"] == ["task.failed"]
    assert webhook["secret"].startswith("whsec_")
    listed = cli(env, "webhooks", "list", "--json").json()
    assert webhook["id"] in [w["id"] for w in listed["items"]]
    assert all("secret" not in w for w in listed["items"])
    changed = cli(
        env, "webhooks", "update", webhook["id"], "--event", "crawl.completed", "--every-brand"
    )
    assert changed.code == 0, changed
    shown = cli(env, "webhooks", "show", webhook["id"], "--json").json()
    assert shown["events"] == ["crawl.completed"]
    assert shown["brand"] is None
    # A ping, followed to its end: the receiver got it, and the deliveries say so.
    ping = cli(env, "webhooks", "test", webhook["id"], "--wait", "--json")
    assert ping.code == 0, ping
    assert ping.json()["status"] == "succeeded"
    assert [d["body"]["type"] for d in got] == ["ping"]
    assert "webhook-signature" in {k.lower() for k in got[0]["headers"]}
    sent = cli(env, "webhooks", "deliveries", webhook["id"], "--json").json()["items"]
    assert sent[0]["event"] == "ping"
    assert sent[0]["status_code"] == 204
    table = cli(env, "webhooks", "deliveries", webhook["id"])
    assert "ping" in table.out, table
    # A receiver the guard refuses: 422 naming url.
    blocked = cli(env, "webhooks", "add", "http://10.1.2.3/hooks", "--event", "task.failed")
    assert blocked.code == 2, blocked
    assert "url:" in blocked.err, blocked
    assert cli(env, "webhooks", "delete", webhook["id"]).code == 0
    missing = cli(env, "webhooks", "show", webhook["id"])
    assert missing.code == 2, missing
    assert "404" in missing.err, missing
