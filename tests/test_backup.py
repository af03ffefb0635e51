"""Backup and restore of the embedded default (issue 20): the real `helpline up` crawls the
sample site and answers; a live backup (`helpline backup` and `POST /api/v1/admin/backup`
while up runs and another brand's pages are being indexed: every page record with exactly its
points) restored into a new data dir brings back the same answers, documents and keys; a
stopped one too; a second restore, a changed file, another format version are refused."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from helpline.cli.backup import FORMAT_VERSION, KV_FILE, MANIFEST, POINTS_FILE
from helpline.cli.natsserver import NatsServer
from helpline.common import subjects
from helpline.common.kvscan import kv_entries
from helpline.common.subjects import Bucket
from helpline.common.vectors import IndexedPoint, open_store
from helpline.testing import TEST_ADMIN_KEY, HelplineUp, serve_site

SITE = Path(__file__).parent / "site"
HELPLINE = str(Path(sys.executable).parent / "helpline")
ENV = {
    "HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1",
    "HELPLINE_LOG_JSON": "false",
    "HELPLINE_ADMIN_KEY": TEST_ADMIN_KEY,
}
QUESTIONS = (
    "How long should I hold the reset button to restore factory settings?",
    "What does a blinking amber LED mean?",
    "How do I update the firmware?",
    "How do I open a port in the firewall?",
    "How do I connect to wifi?",
)


def wait_terminal(client: httpx.Client, task_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}").json()
        if record["status"] in {"succeeded", "failed", "expired", "cancelled"}:
            return record
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} not terminal")


def answers(client: httpx.Client) -> list[list[str]]:
    cited = []
    for question in QUESTIONS:
        response = client.post("/api/v1/query", json={"question": question, "brand": "acme"})
        assert response.status_code == 200, response.text
        cited.append([s["url"] for s in response.json()["sources"]])
    return cited


def documents(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/api/v1/documents", params={"brand": "acme", "limit": 1000})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def helpline(
    *args: str, data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`helpline <args>` on `data_dir`, with no Helpline setting of this process's."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("HELPLINE_")}
    environment = {**inherited, "HELPLINE_DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.run(
        [HELPLINE, *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


async def _pages(url: str) -> dict[str, bytes]:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(subjects.bucket(Bucket.PAGES))
        return {entry.key: entry.value async for entry in kv_entries(kv)}
    finally:
        await nc.close()


async def _put_page(url: str, key: str, value: bytes) -> None:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(subjects.bucket(Bucket.PAGES))
        await kv.put(key, value)
    finally:
        await nc.close()


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_backup_then_restore_into_a_new_data_dir_gives_the_same_answers(tmp_path: Path) -> None:
    source, target, folder = tmp_path / "source", tmp_path / "target", tmp_path / "backup"
    live, server_side = tmp_path / "live", tmp_path / "server-side"
    env = {**ENV, "HELPLINE_BACKUP_DIR": str(server_side)}
    with serve_site(SITE) as site, HelplineUp(source, env) as up, up.client() as client:
        crawl = client.post("/api/v1/crawl", json={"url": f"{site}/index.html", "brand": "acme"})
        assert crawl.status_code == 202, crawl.text
        assert wait_terminal(client, crawl.json()["task_id"])["status"] == "succeeded"
        made = client.post(
            "/api/v1/keys", json={"name": "reader", "scopes": ["query"], "brands": ["acme"]}
        )
        assert made.status_code == 201, made.text
        reader = made.json()["key"]
        before, listed = answers(client), documents(client)
        # Live, while another crawl runs: `helpline backup` asks up to take it, and so does
        # the API, into HELPLINE_BACKUP_DIR.
        paced = {
            "urls": [d["url"] for d in listed],
            "brand": "globex",
            "max_concurrent": 1,
            "delay_ms": 300,
        }
        other = client.post("/api/v1/scrape/batch", json=paced)
        assert other.status_code == 202, other.text
        made_live = helpline("backup", str(live), data_dir=source)
        assert made_live.returncode == 0, made_live.stderr
        crawling = client.get(f"/api/v1/tasks/{other.json()['task_id']}").json()["status"]
        by_api = client.post("/api/v1/admin/backup", json={"with_tasks": True})
        assert by_api.status_code == 200, by_api.text
        assert Path(by_api.json()["path"]).parent == server_side
        assert by_api.json()["manifest"]["counts"]["buckets"]["tasks"] >= 1
        assert wait_terminal(client, other.json()["task_id"])["status"] == "succeeded"
        # The process that takes live backups lists its services, not its backup part.
        services = {w["service"] for w in client.get("/api/v1/workers").json()}
        assert "rag" in services, services
        assert "backup" not in services, services
    assert len(listed) >= 5
    assert all(before), before
    assert consistent(live) >= len(listed)
    assert consistent(Path(by_api.json()["path"])) >= len(listed)
    left_out = json.loads((live / MANIFEST).read_text())["left_out"]["pages"]
    print(f"\nlive backup while the other crawl was {crawling}: {len(left_out)} left out")  # noqa: T201

    started = time.perf_counter()
    made_backup = helpline("backup", str(folder), data_dir=source)
    backup_s = time.perf_counter() - started
    assert made_backup.returncode == 0, made_backup.stderr
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["counts"]["buckets"]["pages"] == 2 * len(listed)  # acme's and globex's
    assert manifest["counts"]["buckets"]["keys"] >= 1
    assert manifest["counts"]["points"] > len(listed)
    assert manifest["left_out"]["pages"] == []
    size = sum(f.stat().st_size for f in folder.iterdir())

    started = time.perf_counter()
    # The live backup restored: the same answers and documents below.
    restored = helpline("restore", str(live), data_dir=target)
    restore_s = time.perf_counter() - started
    assert restored.returncode == 0, restored.stderr

    again = helpline("restore", str(folder), data_dir=target)
    assert again.returncode == 2
    assert "pass --force" in again.stderr

    # A changed byte, another format version: refused before anything is written.
    tampered, newer = tmp_path / "tampered", tmp_path / "newer"
    shutil.copytree(folder, tampered)
    raw = bytearray(gzip.decompress((tampered / POINTS_FILE).read_bytes()))
    raw[raw.index(b'"url"') + 8] ^= 1
    (tampered / POINTS_FILE).write_bytes(gzip.compress(bytes(raw)))
    refused = helpline("restore", str(tampered), data_dir=tmp_path / "t2")
    assert refused.returncode == 2
    assert "checksum" in refused.stderr
    shutil.copytree(folder, newer)
    (newer / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    refused = helpline("restore", str(newer), data_dir=tmp_path / "t2")
    assert refused.returncode == 2
    assert "format version 99" in refused.stderr
    assert not (tmp_path / "t2").exists()

    # The restored system fetches nothing: the site need not be served again.
    with HelplineUp(target, ENV) as up, up.client() as client:
        assert answers(client) == before
        assert documents(client) == listed
        asked = client.post(
            "/api/v1/query",
            json={"question": QUESTIONS[0], "brand": "acme"},
            headers={"Authorization": f"Bearer {reader}"},
        )
        assert asked.status_code == 200, asked.text
        # No HELPLINE_BACKUP_DIR: the API takes none; a live backup into a used folder: refused.
        refused_api = client.post("/api/v1/admin/backup")
        assert refused_api.status_code == 409, refused_api.text
        assert "HELPLINE_BACKUP_DIR" in refused_api.json()["detail"]
        into_used = helpline("backup", str(folder), data_dir=target)
        assert into_used.returncode == 2
        assert "not empty" in into_used.stderr
    print(  # noqa: T201
        f"\nbackup {backup_s:.2f} s, restore {restore_s:.2f} s, {size / 1024:.1f} KiB "
        f"({manifest['counts']['points']} points, {manifest['counts']['buckets']['pages']} pages; files "
        f"{KV_FILE} {manifest['files'][KV_FILE]['bytes']} B, "
        f"{POINTS_FILE} {manifest['files'][POINTS_FILE]['bytes']} B)"
    )

    # A page record whose chunk count disagrees with its points is left out with them.
    with NatsServer(source / "nats") as server:
        pages = asyncio.run(_pages(server.url))
        key, value = sorted(pages.items())[0]
        state = json.loads(value)
        asyncio.run(
            _put_page(
                server.url, key, json.dumps({**state, "chunks": state["chunks"] + 1}).encode()
            )
        )
    partial = tmp_path / "partial"
    assert helpline("backup", str(partial), "--with-tasks", data_dir=source).returncode == 0
    second = json.loads((partial / MANIFEST).read_text())
    assert second["counts"]["buckets"]["tasks"] > len(listed)  # the crawl and its pages
    assert second["left_out"]["pages"] == [key]
    assert second["left_out"]["points"] == state["chunks"]
    assert second["counts"]["points"] == manifest["counts"]["points"] - state["chunks"]
    with gzip.open(partial / POINTS_FILE, "rt") as lines:
        pages_held = {
            (p["brand"], p["url"]) for line in lines if (p := json.loads(line)["payload"])
        }
    assert (state["brand"], state["url"]) not in pages_held

    # Qdrant Edge's files held by another process (up's, when its nats-server is elsewhere).
    held = open_store(url=None, data_dir=source, collection="helpline", dim=384)
    try:
        locked = helpline("backup", str(tmp_path / "locked"), data_dir=source)
    finally:
        held.close()
    assert locked.returncode == 2
    assert "open in another process" in locked.stderr
    assert not (tmp_path / "locked").exists()

    # --force replaces what the target holds: now exactly the partial backup.
    forced = helpline("restore", str(partial), "--force", data_dir=target)
    assert forced.returncode == 0, forced.stderr
    assert len(exported(target)) == second["counts"]["points"]

    # Into a deployment with a Qdrant server (qdrant-client's local mode here) and a NATS
    # server of its own, running; then backed up from it, running.
    elsewhere, back = tmp_path / "elsewhere", tmp_path / "back"
    qdrant_url = f"path:{tmp_path / 'qdrant-server'}"
    with NatsServer(tmp_path / "cluster") as cluster:
        deployment = {"HELPLINE_NATS_URL": cluster.url, "HELPLINE_QDRANT_URL": qdrant_url}
        into = helpline(
            "restore",
            str(folder),
            "--qdrant-url",
            qdrant_url,
            data_dir=elsewhere,
            env={"HELPLINE_NATS_URL": cluster.url},
        )
        assert into.returncode == 0, into.stderr
        assert exported(elsewhere, qdrant_url) == exported(source)
        twice = helpline("restore", str(folder), data_dir=elsewhere, env=deployment)
        assert twice.returncode == 2
        assert "pass --force" in twice.stderr
        out = helpline("backup", str(back), data_dir=elsewhere, env=deployment)
        assert out.returncode == 0, out.stderr
    assert json.loads((back / MANIFEST).read_text())["counts"] == manifest["counts"]
    assert not elsewhere.exists()  # nothing of the embedded default was made


def consistent(backup: Path) -> int:
    """Check that every page record of a backup has exactly its points and every point its
    record; the number of pages."""
    manifest = json.loads((backup / MANIFEST).read_text())
    assert manifest["source"]["live"] is True
    with gzip.open(backup / KV_FILE, "rt") as lines:
        states = [
            json.loads(e["value"]) for line in lines if (e := json.loads(line))["bucket"] == "pages"
        ]
    with gzip.open(backup / POINTS_FILE, "rt") as lines:
        held = Counter(
            (p["payload"]["brand"], p["payload"]["url"])
            for line in lines
            if (p := json.loads(line))
        )
    recorded = Counter({(s["brand"], s["url"]): s["chunks"] for s in states})
    assert recorded == held
    assert manifest["counts"]["points"] == sum(held.values())
    return len(states)


def exported(data_dir: Path, url: str | None = None) -> dict[str, tuple[Any, ...]]:
    """Every point of a data dir's store (or of the store `url` names): id -> its parts."""
    store = open_store(url=url, data_dir=data_dir, collection="helpline", dim=384)
    try:
        return {p.id: _parts(p) for p in store.export_points()}
    finally:
        store.close()


def _parts(point: IndexedPoint) -> tuple[Any, ...]:
    sparse = point.sparse
    return (
        [round(float(v), 6) for v in point.vector],
        None if sparse is None else (sparse.indices, [round(v, 6) for v in sparse.values]),
        point.payload,
    )
