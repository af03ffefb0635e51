"""Diversifying candidate chunks: at most a few chunks of one page, best first."""

from __future__ import annotations

from helpline.common.vectors import Hit
from helpline.rag.retrieval import diversify, with_page_mates


def hit(point: str, url: str, score: float) -> Hit:
    return Hit(point, score, {"url": url, "text": point})


def test_diversify_keeps_two_chunks_a_page_in_order() -> None:
    hits = [hit(f"b{i}", "/b", 0.9 - i / 100) for i in range(5)] + [hit("a", "/a", 0.5)]
    kept = diversify(hits, per_page=2, limit=10)
    assert [h.id for h in kept] == ["b0", "b1", "a"]
    assert [h.id for h in diversify(hits, per_page=2, limit=2)] == ["b0", "b1"]


def test_page_mates_follow_the_kept_pages_only() -> None:
    hits = [hit(f"b{i}", "/b", 0.9 - i / 100) for i in range(5)]
    hits += [hit("a", "/a", 0.5), hit("c0", "/c", 0.4), hit("c1", "/c", 0.3)]
    kept = diversify(hits, per_page=2, limit=3)
    assert [h.id for h in kept] == ["b0", "b1", "a"]
    # /b's other chunks come after, at most 4 of /b in all; /c was not kept, so none of it.
    assert [h.id for h in with_page_mates(kept, hits, per_page=4)] == [
        "b0",
        "b1",
        "a",
        "b2",
        "b3",
    ]
