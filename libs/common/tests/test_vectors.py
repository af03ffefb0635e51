from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from qdrant_client import QdrantClient

from helpline.common.embedding import Embedder
from helpline.common.vectors import (
    INDEXED_FIELDS,
    EdgeStore,
    IndexedPoint,
    QdrantServerStore,
    VectorStore,
    open_store,
    point_id,
)
from helpline.common.vectors import edge as edge_store

DIM = 384

# qdrant_client's local mode keeps no payload indexes and says so, once per process.
local_index_warning = pytest.mark.filterwarnings(
    "ignore:Payload indexes have no effect in the local Qdrant:UserWarning"
)


@pytest.fixture(
    params=[
        "edge",
        pytest.param("qdrant-local", marks=local_index_warning),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    opened: VectorStore
    if request.param == "edge":
        opened = EdgeStore(tmp_path / "shard", DIM)
    else:
        opened = QdrantServerStore(QdrantClient(location=":memory:"), "chunks", DIM)
    opened.ensure_collection()
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load(threads=2)


def unit(seed: int) -> npt.NDArray[np.float32]:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def chunk(
    url: str, position: int, brand: str = "acme", content_hash: str = "h", seed: int | None = None
) -> IndexedPoint:
    vector = unit(seed if seed is not None else position)
    payload = {"brand": brand, "url": url, "content_hash": content_hash, "position": position}
    return IndexedPoint(point_id(url, position), vector, payload)


def test_point_id_is_a_stable_uuid() -> None:
    first = point_id("https://docs.example.com/a", 0)
    assert first == point_id("https://docs.example.com/a", 0)
    assert uuid.UUID(first).version == 5
    assert first != point_id("https://docs.example.com/a", 1)
    assert first != point_id("https://docs.example.com/b", 0)
    assert point_id("https://x/a1", 2) != point_id("https://x/a", 12)


def test_search_returns_nearest_with_payload(store: VectorStore) -> None:
    points = [chunk("https://docs/a", i) for i in range(5)]
    store.upsert(points)
    target = points[3]
    query = np.asarray(target.vector) + 0.1 * unit(99)

    hits = store.search(query, limit=3)

    assert len(hits) == 3
    assert hits[0].id == target.id
    assert hits[0].payload == target.payload
    assert hits[0].score > 0.9
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_brand_filter_never_returns_another_brand(store: VectorStore) -> None:
    store.upsert([chunk("https://a/p", i, brand="acme", seed=i) for i in range(10)])
    store.upsert([chunk("https://b/p", i, brand="globex", seed=100 + i) for i in range(10)])
    globex_vector = unit(100)

    unfiltered = store.search(globex_vector, limit=1)
    filtered = store.search(globex_vector, limit=20, brand="acme")

    assert unfiltered[0].payload["brand"] == "globex"
    assert len(filtered) == 10
    assert {h.payload["brand"] for h in filtered} == {"acme"}
    assert store.search(globex_vector, limit=5, brand="initech") == []


def test_upsert_same_id_twice_keeps_one_point(store: VectorStore) -> None:
    store.upsert([chunk("https://docs/a", 0, content_hash="old")])
    store.upsert([chunk("https://docs/a", 0, content_hash="new")])

    assert store.count() == 1
    (hit,) = store.search(unit(0), limit=5)
    assert hit.payload["content_hash"] == "new"


def test_delete(store: VectorStore) -> None:
    points = [chunk("https://docs/a", i) for i in range(3)]
    store.upsert(points)

    store.delete([points[0].id, points[2].id, point_id("https://docs/unknown", 0)])

    assert store.count() == 1
    assert [h.id for h in store.search(unit(0), limit=5)] == [points[1].id]


def test_hashes_for_url(store: VectorStore) -> None:
    # More points than one scroll page, so paging has to work.
    page = [chunk("https://docs/a", i, content_hash=f"h{i}") for i in range(300)]
    store.upsert(page)
    store.upsert([chunk("https://docs/b", i, content_hash="other") for i in range(3)])
    store.upsert(
        [chunk("https://docs/a", i, brand="globex", content_hash="x") for i in range(500, 503)]
    )

    hashes = store.hashes_for_url("https://docs/a", "acme")

    assert hashes == {p.id: p.payload["content_hash"] for p in page}
    assert store.hashes_for_url("https://docs/missing", "acme") == {}


def test_count_by_brand(store: VectorStore) -> None:
    store.upsert([chunk("https://a/p", i, brand="acme") for i in range(4)])
    store.upsert([chunk("https://b/p", i, brand="globex") for i in range(2)])

    assert (store.count(), store.count("acme"), store.count("globex")) == (6, 4, 2)
    assert store.count("initech") == 0


def test_ids_of_brand(store: VectorStore) -> None:
    # More points than one scroll page, of two pages, beside another brand's.
    acme = [chunk("https://docs/a", i) for i in range(200)]
    acme += [chunk("https://docs/b", i) for i in range(100)]
    store.upsert(acme)
    store.upsert([chunk("https://docs/a", i, brand="globex") for i in range(500, 503)])

    assert sorted(store.ids_of_brand("acme")) == sorted(p.id for p in acme)
    assert store.ids_of_brand("initech") == []
    store.delete(store.ids_of_brand("acme"))
    assert (store.count("acme"), store.count("globex")) == (0, 3)


def test_ensure_collection_is_idempotent(store: VectorStore) -> None:
    store.upsert([chunk("https://docs/a", 0)])
    store.ensure_collection()
    assert store.count() == 1


def test_wrong_dimension_is_refused(store: VectorStore) -> None:
    with pytest.raises(ValueError, match="dimensions"):
        store.search([1.0, 0.0], limit=1)


def test_real_embeddings_find_the_matching_passage(store: VectorStore, embedder: Embedder) -> None:
    passages = [
        "To reset your password, open Settings, choose Security and click Reset password.",
        "Invoices can be downloaded as PDF files from the Billing page.",
        "Our offices are closed on public holidays.",
        "You can cancel your subscription at any time from the Plans page.",
    ]
    vectors = embedder.embed(passages)
    store.upsert(
        [
            IndexedPoint(point_id("https://help/faq", i), vector, {"brand": "acme", "text": text})
            for i, (text, vector) in enumerate(zip(passages, vectors, strict=True))
        ]
    )

    (query,) = embedder.embed(["How do I reset my password?"])
    hits = store.search(query, limit=2, brand="acme")

    assert hits[0].payload["text"] == passages[0]
    assert hits[0].score > hits[1].score + 0.1


def test_edge_creates_indexes_before_data(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "shard", DIM)
    store.ensure_collection()
    store.ensure_collection()
    schema = store._shard.info().payload_schema
    assert set(INDEXED_FIELDS) <= set(schema)
    assert store.count() == 0
    store.close()


def test_edge_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    store = EdgeStore(path, DIM)
    store.ensure_collection()
    points = [chunk("https://docs/a", i, content_hash=f"h{i}") for i in range(20)]
    store.upsert(points)
    store.delete([points[0].id])
    store.close()
    store.close()

    reopened = EdgeStore(path, DIM)
    reopened.ensure_collection()
    assert reopened.count() == 19
    assert reopened.search(unit(5), limit=1)[0].payload == points[5].payload
    assert len(reopened.hashes_for_url("https://docs/a", "acme")) == 19
    reopened.close()


def test_edge_keeps_writes_when_the_process_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    child = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from helpline.common.vectors import EdgeStore, IndexedPoint, point_id
        store = EdgeStore(Path({str(path)!r}), 4, flush_interval=3600)
        store.ensure_collection()
        store.upsert([IndexedPoint(point_id("u", i), [1.0, i, 0.0, 0.0], {{"brand": "b"}})
                      for i in range(7)])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", child], check=False, timeout=60)
    assert result.returncode == -9

    store = EdgeStore(path, 4)
    assert store.count("b") == 7
    store.close()


def test_edge_refuses_a_second_opener(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "shard", DIM)
    with pytest.raises(Exception, match="WAL"):
        EdgeStore(tmp_path / "shard", DIM)
    store.close()


def test_edge_refuses_another_dimension(tmp_path: Path) -> None:
    EdgeStore(tmp_path / "shard", DIM).close()
    with pytest.raises(Exception, match="vector size"):
        EdgeStore(tmp_path / "shard", DIM * 2)


def test_edge_concurrent_searches_and_upserts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EdgeStore(tmp_path / "shard", DIM, flush_interval=0.0)
    store.ensure_collection()
    brands = ("acme", "globex")
    # Housekeeping flushes whatever is pending, beside the writes and searches.
    monkeypatch.setattr(edge_store, "SEARCH_LULL_S", 0.0)
    writing = threading.Event()

    def housekeeping() -> int:
        rounds = 0
        while writing.is_set():
            store.maintain()
            rounds += 1
        return rounds

    def write(batch: int) -> None:
        store.upsert(
            [
                chunk(f"https://docs/{batch}", i, brand=brands[batch % 2], seed=batch * 100 + i)
                for i in range(20)
            ]
        )

    def read(seed: int) -> set[str]:
        return {h.payload["brand"] for h in store.search(unit(seed), limit=10, brand="globex")}

    writing.set()
    with ThreadPoolExecutor(max_workers=8) as pool:
        housekeeper = pool.submit(housekeeping)
        writes = [pool.submit(write, b) for b in range(40)]
        reads = [pool.submit(read, s) for s in range(200)]
        for future in writes:
            future.result()
        seen = set().union(*(future.result() for future in reads))
        writing.clear()
        assert housekeeper.result() > 0

    assert seen <= {"globex"}
    assert (store.count(), store.count("globex")) == (800, 400)
    store.close()


@local_index_warning
def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    edge = open_store(url=None, data_dir=tmp_path, collection="docs", dim=DIM)
    assert isinstance(edge, EdgeStore)
    assert edge.path == tmp_path / "qdrant" / "docs"
    edge.close()

    memory = open_store(url=":memory:", data_dir=tmp_path, collection="docs", dim=DIM)
    assert isinstance(memory, QdrantServerStore)
    memory.upsert([chunk("https://docs/a", 0)])
    assert memory.count() == 1
    memory.close()

    local = open_store(url=f"path:{tmp_path / 'local'}", data_dir=tmp_path, collection="d", dim=DIM)
    local.upsert([chunk("https://docs/a", 0)])
    local.close()
    reopened = open_store(
        url=f"path:{tmp_path / 'local'}", data_dir=tmp_path, collection="d", dim=DIM
    )
    assert reopened.count() == 1
    reopened.close()


#: Edge indexes a segment only past 10 MB of vectors: 700 points of this size get there.
WIDE = 4096


def wide_points(count: int, first: int = 0) -> list[IndexedPoint]:
    vectors = np.random.default_rng(first).standard_normal((count, WIDE)).astype(np.float32)
    return [
        IndexedPoint(point_id(f"https://docs/p{i // 10}", i), vectors[i - first], {"brand": "acme"})
        for i in range(first, first + count)
    ]


def swap_in(store: EdgeStore) -> None:
    """Call `maintain` as the embedder does until the optimized copy is swapped in."""
    deadline = time.monotonic() + 180
    while not store.maintain():
        assert store._rebuild is not None, "the rebuild was dropped"
        assert time.monotonic() < deadline, "the rebuild did not finish"
        time.sleep(0.05)


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_edge_builds_its_index_in_a_child_process_once_writing_pauses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shard"
    store = EdgeStore(path, WIDE)
    store.ensure_collection()
    points = wide_points(800)
    monkeypatch.setattr(edge_store, "OPTIMIZE_AFTER_POINTS", 500)
    store.upsert(points)
    target = points[123]
    assert store._shard.info().indexed_vectors_count == 0
    monkeypatch.setattr(edge_store, "SEARCH_LULL_S", 0.0)
    assert store.maintain() is False
    assert store._rebuild is None  # just written: the crawl may go on

    monkeypatch.setattr(edge_store, "OPTIMIZE_QUIET_S", 0.0)
    assert store.maintain() is False
    rebuild = store._rebuild
    assert rebuild is not None
    assert rebuild.process.pid != os.getpid()
    assert siblings(path) == ["shard.optimizing"]
    # This process goes on answering from the original meanwhile.
    assert store.search(target.vector, limit=1)[0].id == target.id
    while rebuild.process.poll() is None:
        time.sleep(0.05)
    # Done, but a question was just asked: the swap (a load that holds the GIL) waits ...
    monkeypatch.setattr(edge_store, "SEARCH_LULL_S", 3600.0)
    store.search(target.vector, limit=1)
    assert store.maintain() is False
    monkeypatch.setattr(edge_store, "OPTIMIZE_MAX_DEFER_S", 0.0)  # ... not for ever
    swap_in(store)

    assert store._shard.info().indexed_vectors_count == len(points)
    assert siblings(path) == []
    hits = store.search(target.vector, limit=3)
    assert hits[0].id == target.id
    assert hits[0].payload == target.payload
    assert store.count() == len(points)
    assert store.maintain() is False  # nothing new since
    assert store._rebuild is None
    store.upsert(wide_points(1, first=900))  # the swapped-in shard takes writes
    store.close()
    reopened = EdgeStore(path, WIDE)
    assert reopened.count() == len(points) + 1
    assert reopened.search(target.vector, limit=1)[0].id == target.id
    assert reopened._unindexed < 500  # indexed already: no rebuild at start
    reopened.close()


def test_edge_drops_a_rebuild_that_a_write_overtook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shard"
    store = EdgeStore(path, WIDE)
    store.ensure_collection()
    monkeypatch.setattr(edge_store, "OPTIMIZE_AFTER_POINTS", 500)
    monkeypatch.setattr(edge_store, "OPTIMIZE_QUIET_S", 0.0)
    monkeypatch.setattr(edge_store, "SEARCH_LULL_S", 0.0)
    store.upsert(wide_points(800))
    store.maintain()
    assert store._rebuild is not None
    late = wide_points(1, first=800)
    store.upsert(late)  # the copy misses it: never swapped in
    store.delete([late[0].id])
    deadline = time.monotonic() + 180
    while store._rebuild is not None:
        assert store.maintain() is False
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert siblings(path) == []
    assert store.count() == 800
    store.upsert(late)
    store.maintain()  # a new copy, with the late point
    swap_in(store)
    assert store.count() == 801
    assert store.search(late[0].vector, limit=1)[0].id == late[0].id
    store.close()


def test_edge_keeps_serving_when_a_rebuild_fails_and_waits_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "shard"
    store = EdgeStore(path, DIM)
    store.ensure_collection()
    monkeypatch.setattr(edge_store, "OPTIMIZE_AFTER_POINTS", 1)
    monkeypatch.setattr(edge_store, "OPTIMIZE_QUIET_S", 0.0)
    monkeypatch.setattr(edge_store, "OPTIMIZE_RETRY_S", 0.5)
    monkeypatch.setattr(
        edge_store, "_OPTIMIZE", "import sys; print('disk full', file=sys.stderr); sys.exit(5)"
    )
    store.upsert([chunk("https://docs/a", i) for i in range(30)])
    store.maintain()
    assert store._rebuild is not None
    while store._rebuild is not None:
        assert store.maintain() is False
        time.sleep(0.05)
    assert "disk full" in caplog.text
    assert siblings(path) == []
    store.maintain()
    assert store._rebuild is None  # not at once again ...
    time.sleep(edge_store.OPTIMIZE_RETRY_S)
    store.maintain()
    assert store._rebuild is not None  # ... but later
    assert store.count() == 30
    store.close()


def test_edge_recovers_a_swap_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    store = EdgeStore(path, DIM)
    store.ensure_collection()
    store.upsert([chunk("https://docs/a", i) for i in range(30)])
    store.close()
    # Killed between moving the original aside and moving the optimized copy in.
    shutil.copytree(path, tmp_path / "shard.optimizing")
    path.rename(tmp_path / "shard.retired")
    reopened = EdgeStore(path, DIM)
    assert reopened.count() == 30
    assert siblings(path) == []
    reopened.close()
    # Killed after the copy was moved in, before the original was deleted.
    shutil.copytree(path, tmp_path / "shard.retired")
    reopened = EdgeStore(path, DIM)
    assert reopened.count() == 30
    assert siblings(path) == []
    reopened.close()


class CountingFlushes:
    """An Edge shard whose flushes are counted."""

    def __init__(self, shard: Any) -> None:
        self.shard = shard
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        self.shard.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self.shard, name)


def test_edge_flushes_wait_for_a_lull_in_searches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EdgeStore(tmp_path / "shard", DIM, flush_interval=0.0)
    store.ensure_collection()
    shard = CountingFlushes(store._shard)
    monkeypatch.setattr(store, "_shard", shard)
    points = [chunk(f"https://docs/p{i // 10}", i % 10, seed=i) for i in range(20)]

    store.upsert(points[:10])
    assert shard.flushes == 0  # not in the write a question may wait behind
    store.search(unit(1), limit=3)  # a question is being answered
    assert store.maintain() is False
    assert shard.flushes == 0
    monkeypatch.setattr(edge_store, "FLUSH_MAX_DEFER_S", 0.0)  # deferred long enough
    assert store.maintain() is False
    assert shard.flushes == 1
    assert store.maintain() is False  # nothing pending
    assert shard.flushes == 1

    monkeypatch.setattr(edge_store, "FLUSH_MAX_DEFER_S", 30.0)
    store.upsert(points[10:])
    store.search(unit(2), limit=3)
    assert store.maintain() is False
    assert shard.flushes == 1
    monkeypatch.setattr(edge_store, "SEARCH_LULL_S", 0.0)  # the questions paused
    assert store.maintain() is False
    assert shard.flushes == 2
    store.close()


def test_weighted_fusion_prefers_the_heavier_ranking() -> None:
    from helpline.common.vectors import Hit, rrf

    dense = [Hit("d", 0.9, {}), Hit("both", 0.8, {})]
    lexical = [Hit("l", 9.0, {}), Hit("both", 8.0, {})]
    fused = rrf([dense, lexical], 3, weights=(1.0, 0.7))
    assert [h.id for h in fused] == ["both", "d", "l"]
    # First in every list scores 1; the scores are fractions of that.
    top = rrf([[Hit("x", 1.0, {})], [Hit("x", 1.0, {})]], 1, weights=(1.0, 0.7))
    assert abs(top[0].score - 1.0) < 1e-9
    assert 0 < fused[-1].score < fused[1].score < fused[0].score < 1


def test_fusion_over_ids_matches_fusion_over_hits_and_cuts_weak_lexical_hits() -> None:
    from helpline.common.vectors import Hit, fuse, fuse_ids

    ids = [uuid.uuid4() for _ in range(5)]
    dense = [(ids[0], 0.9), (ids[1], 0.8), (ids[2], 0.7)]
    # ids[4] scores under LEXICAL_CUT of the best lexical hit: it must not count.
    lexical = [(ids[2], 10.0), (ids[3], 8.0), (ids[4], 1.0)]
    fused = fuse_ids(dense, lexical, 10)
    assert [point for point, _ in fused] == [ids[2], ids[0], ids[1], ids[3]]
    as_hits = fuse(
        [Hit(str(p), s, {"n": str(p)}) for p, s in dense],
        [Hit(str(p), s, {"n": str(p)}) for p, s in lexical],
        10,
    )
    assert [(h.id, h.score, h.payload["n"]) for h in as_hits] == [
        (str(p), s, str(p)) for p, s in fused
    ]
