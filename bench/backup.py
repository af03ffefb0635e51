"""Backup and restore time and size at the PostgreSQL manual's scale.

The manual (Debian's postgresql-doc-15) is extracted and chunked as the scraper does
(`helpline.scraper.extract`, `helpline.common.chunking`); each chunk gets its real lexical
vector, the payload the embedder writes, and a random unit dense vector in place of the
model's (embedding 13k chunks takes minutes of both cores; a random float32 vector has a
real one's size and compresses no better). Every page gets its record in `pages` and its
text in `texts`. That data dir (Qdrant Edge shard and nats-server store) is then backed up
with `helpline backup` and restored into a new data dir with `helpline restore`, each run as
an operator runs it and timed from outside; the restored index is counted.

    uv run python bench/backup.py [--pages N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nats
import numpy as np
from query_latency import MANUAL, ensure_manual
from results import capture

from helpline.cli.natsserver import NatsServer
from helpline.common.chunking import chunk_document
from helpline.common.layout import BusLayout, declare
from helpline.common.lexical import encode_document
from helpline.common.messages import PageState
from helpline.common.pagestate import page_state_key
from helpline.common.subjects import Bucket
from helpline.common.vectors import IndexedPoint, open_store, point_id
from helpline.embedder.indexing import point_scope
from helpline.scraper.extract import extract

BRAND = "postgresql"
SITE = "http://127.0.0.1:8000"
DIM = 384
HELPLINE = str(Path(sys.executable).parent / "helpline")


def build(data_dir: Path, pages: int | None) -> tuple[int, int]:
    """The manual's pages indexed into `data_dir`; returns (pages, points)."""
    files = sorted(ensure_manual().glob("*.html"))[:pages]
    rng = np.random.default_rng(20)
    store = open_store(url=None, data_dir=data_dir, collection="helpline", dim=DIM)
    records: list[tuple[str, bytes, bytes]] = []
    now = datetime.now(UTC)
    points = 0
    try:
        for path in files:
            url = f"{SITE}/{path.name}"
            doc = extract(path.read_text(errors="replace"), url)
            chunks = chunk_document(doc)
            vectors = rng.standard_normal((len(chunks), DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.upsert(
                [
                    IndexedPoint(
                        id=point_id(point_scope(BRAND, url), chunk.position),
                        vector=vector,
                        sparse=encode_document(f"{doc.title}\n{chunk.text}"),
                        payload={
                            "url": url,
                            "title": doc.title,
                            "brand": BRAND,
                            "text": chunk.text,
                            "heading": chunk.heading,
                            "position": chunk.position,
                            "content_hash": chunk.content_hash,
                            "fetched_at": now.isoformat(),
                        },
                    )
                    for chunk, vector in zip(chunks, vectors, strict=True)
                ]
            )
            points += len(chunks)
            state = PageState(
                url=url,
                title=doc.title,
                chunks=len(chunks),
                brand=BRAND,
                fetched_at=now,
                indexed_at=now,
            )
            text = "\n\n".join(c.text for c in chunks)
            records.append(
                (page_state_key(BRAND, url), state.model_dump_json().encode(), text.encode())
            )
    finally:
        store.close()
    with NatsServer(data_dir / "nats") as server:
        asyncio.run(_write_records(server.url, records))
    return len(files), points


async def _write_records(url: str, records: list[tuple[str, bytes, bytes]]) -> None:
    nc = await nats.connect(url)
    try:
        buckets = await declare(nc.jetstream(), BusLayout())
        for key, state, text in records:
            await buckets[Bucket.TEXTS].put(key, text)
            await buckets[Bucket.PAGES].put(key, state)
    finally:
        await nc.close()


def timed(*args: str, data_dir: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [HELPLINE, *args],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("HELPLINE_")},
            "HELPLINE_DATA_DIR": str(data_dir),
        },
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=None, help="the first N pages only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="helpline-backup-bench-") as tmp:
        source, target, folder = Path(tmp) / "source", Path(tmp) / "target", Path(tmp) / "backup"
        started = time.perf_counter()
        pages, points = build(source, args.pages)
        print(f"built {pages} pages, {points} points in {time.perf_counter() - started:.0f} s")
        # Blocks in use: Edge's files are sparse, their sizes say more than the disk holds.
        index_bytes = sum(f.stat().st_blocks * 512 for f in source.rglob("*") if f.is_file())
        backup_s = timed("backup", str(folder), data_dir=source)
        restore_s = timed("restore", str(folder), data_dir=target)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        restored = open_store(url=None, data_dir=target, collection="helpline", dim=DIM)
        try:
            count = restored.count()
        finally:
            restored.close()
        sizes = {f.name: f.stat().st_size for f in folder.iterdir()}
        printed = capture("backup")
        print(
            f"corpus: the PostgreSQL 15 manual, {MANUAL} ({pages} pages, {points} chunks), random dense vectors"
        )
        print(f"data dir: {index_bytes / 2**20:.1f} MiB on disk (Edge shard, nats-server store)")
        print(f"backup: {backup_s:.1f} s, {sum(sizes.values()) / 2**20:.1f} MiB")
        for name, size in sorted(sizes.items()):
            print(f"  {name}: {size / 2**20:.2f} MiB")
        print(f"restore into a new data dir: {restore_s:.1f} s, {count} points restored")
        print(f"largest process's peak memory: {peak:.0f} MiB")
        assert count == points, (count, points)
        printed.save()


if __name__ == "__main__":
    main()
