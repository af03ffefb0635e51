"""Offline variants of ranking and answer composition, on a copy of an index.

Opens a COPY of an index Helpline built (Qdrant Edge is one process's: copy the data
folder first), embeds each question of a question set with the questions' model, asks the
shard for its dense and lexical rankings once, and then, per variant, fuses them, ranks
the pages, diversifies (`helpline.rag.retrieval`), composes the answer
(`helpline.rag.compose`, constants patched per variant) and scores recall@1/5, MRR@10 and
the answer's keyword hits with bench/retrieval_eval.py's own rules. The "shipped" variant
is checked against the real `EdgeStore.search` + `Answerer` path (same sources, same
answer) before anything else is reported.

    cp -r /work/benchdata/pg /tmp/offline-pg
    uv run python bench/answer_offline.py --data /tmp/offline-pg --corpus postgresql
    uv run python bench/answer_offline.py --data /tmp/offline-sq --corpus sqlite --only "shipped;X"
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import qdrant_edge as edge
from retrieval_eval import (
    BRAND,
    QUESTIONS,
    TOP_K,
    Question,
    keyword_hits,
    load_questions,
    pages_of,
    scores,
)

from helpline.common.knowledge import load_model, load_question_model
from helpline.common.lexical import encode_query
from helpline.common.settings import StoreSettings
from helpline.common.vectors import SPARSE_VECTOR, EdgeStore, Hit, fusion
from helpline.common.vectors.edge import _as_list, _edge_filter
from helpline.rag import compose as compose_module
from helpline.rag import retrieval
from helpline.rag.compose import compose

#: What rag asks the store for: top_k x candidates, doubled (retrieval.Answerer.retrieve).
CANDIDATES = 4
WANTED = TOP_K * CANDIDATES
LIMIT = WANTED * 2
PREFETCH = fusion._prefetch_limit(LIMIT)


@dataclass
class Ranked:
    """One question's raw rankings: (id, score) best first, and every payload seen."""

    dense: list[tuple[int, float]]
    lexical: list[tuple[int, float]]
    payloads: dict[int, dict]


@dataclass
class Variant:
    name: str
    #: (dense, lexical, limit) -> fused (id, score) best first
    fuse: Callable[[list[tuple[int, float]], list[tuple[int, float]], int], list[tuple[int, float]]]
    #: hits best first -> hits re-scored/re-ordered (page-level ranking); identity by default
    rerank: Callable[[str, list[Hit]], list[Hit]] = lambda q, hits: hits
    #: compose-module constants to patch
    compose: dict[str, object] = field(default_factory=dict)
    #: False: on top of the composer before this harness (`BEFORE`); True: today's composer
    current: bool = False


#: The composer as it was when these variants were measured (619b33a): no recurring-name
#: bonus, no redundancy penalty. Variants are one change (or a few) from it.
BEFORE: dict[str, object] = {"RECURRING_NAME_WEIGHT": 0.0, "REDUNDANCY_WEIGHT": 0.0}


def rankings(store: EdgeStore, vector: list[float], question: str) -> Ranked:
    sparse = encode_query(question)
    requests = [
        edge.QueryRequest(
            limit=PREFETCH, query=q, filter=_edge_filter(brand=BRAND), with_payload=True
        )
        for q in (
            edge.Query.Nearest(_as_list(vector, store.dim)),
            edge.Query.Nearest(
                edge.SparseVector(sparse.indices, sparse.values), using=SPARSE_VECTOR
            ),
        )
    ]
    dense, lexical = store._shard.query_batch(edge.QueryBatchRequest(requests))
    payloads = {p.id: p.payload or {} for p in (*dense, *lexical)}
    return Ranked([(p.id, p.score) for p in dense], [(p.id, p.score) for p in lexical], payloads)


# --- fusions --------------------------------------------------------------------------


def shipped_fuse(dense, lexical, limit):  # type: ignore[no-untyped-def]
    return fusion.fuse_ids(dense, lexical, limit)


def weighted_rrf(weight: float, k: int = fusion.RRF_K, cut: float = fusion.LEXICAL_CUT):  # type: ignore[no-untyped-def]
    def fuse(dense, lexical, limit):  # type: ignore[no-untyped-def]
        floor = lexical[0][1] * cut if lexical else 0.0
        kept = [p for p, s in lexical if s >= floor]
        totals: dict[int, float] = {}
        for w, ranking in ((1.0, [p for p, _ in dense]), (weight, kept)):
            for rank, point in enumerate(ranking):
                totals[point] = totals.get(point, 0.0) + w / (k + rank)
        best = sorted(totals, key=totals.__getitem__, reverse=True)[:limit]
        return [(p, totals[p] * k / (1 + weight)) for p in best]

    return fuse


def score_fusion(weight: float, norm: str = "max"):  # type: ignore[no-untyped-def]
    """Dense cosine plus `weight` x the lexical score over its best (0 when absent)."""

    def fuse(dense, lexical, limit):  # type: ignore[no-untyped-def]
        top = lexical[0][1] if lexical else 1.0
        lex = {p: s / top for p, s in lexical}
        if norm == "minmax" and dense:
            hi, lo = dense[0][1], dense[-1][1]
            den = {p: (s - lo) / (hi - lo or 1.0) for p, s in dense}
        else:
            den = dict(dense)
        floor = dense[-1][1] if dense and norm != "minmax" else 0.0
        totals = {p: den.get(p, floor) + weight * lex.get(p, 0.0) for p in {*den, *lex}}
        best = sorted(totals, key=totals.__getitem__, reverse=True)[:limit]
        return [(p, totals[p] / (1 + weight)) for p in best]

    return fuse


# --- page-level reranks ---------------------------------------------------------------


def page_sum(beta: float, depth: int = 3):  # type: ignore[no-untyped-def]
    """A page's score: its best hit's plus beta x its next (depth-1) hits'; hits keep their
    order within a page, each takes its page's score."""

    def rerank(question: str, hits: list[Hit]) -> list[Hit]:
        by_page: dict[str, list[Hit]] = {}
        for hit in hits:
            by_page.setdefault(str(hit.payload.get("url", "")), []).append(hit)
        page_score = {
            url: hs[0].score + beta * sum(h.score for h in hs[1:depth])
            for url, hs in by_page.items()
        }
        return _page_order(hits, page_score)

    return rerank


def title_boost(weight: float):  # type: ignore[no-untyped-def]
    """A page's score: its best hit's, times 1 + weight x the share of the question's
    content words (compose.terms) in its title."""

    def rerank(question: str, hits: list[Hit]) -> list[Hit]:
        wanted = compose_module.terms(question)
        page_score: dict[str, float] = {}
        for hit in hits:
            url = str(hit.payload.get("url", ""))
            if url in page_score:
                continue
            title = compose_module.terms(str(hit.payload.get("title", "")))
            share = len(wanted & title) / max(len(wanted), 1)
            page_score[url] = hit.score * (1 + weight * share)
        return _page_order(hits, page_score)

    return rerank


def _page_order(hits: list[Hit], page_score: dict[str, float]) -> list[Hit]:
    """Hits re-scored so each page's best hit carries the page score; others scaled alike."""
    out = []
    firsts: dict[str, float] = {}
    for hit in hits:
        url = str(hit.payload.get("url", ""))
        first = firsts.setdefault(url, hit.score or 1e-9)
        out.append(Hit(hit.id, page_score[url] * hit.score / first, hit.payload))
    out.sort(key=lambda h: h.score, reverse=True)
    return out


# --- quote selection -----------------------------------------------------------------


def _overlap(a: object, b: object) -> float:
    ta = compose_module.terms(a.quote.text)  # type: ignore[attr-defined]
    tb = compose_module.terms(b.quote.text)  # type: ignore[attr-defined]
    return len(ta & tb) / (len(ta | tb) or 1)


def diverse_select(redundancy: float = 0.5, pages_first: int = 0):  # type: ignore[no-untyped-def]
    """Greedy selection: each next quote is the best after `redundancy` x its largest word
    overlap (Jaccard) with a quote already chosen; first the best quote of each of the first
    `pages_first` pages."""

    def select(ranked, limit=compose_module.ANSWER_LIMIT):  # type: ignore[no-untyped-def]
        chosen: list = []
        used = 0
        pool = list(ranked)

        def take(c) -> bool:  # type: ignore[no-untyped-def]
            nonlocal used
            pool.remove(c)
            cost = len(c.text()) + 5
            if used + cost > limit:
                return False
            chosen.append(c)
            used += cost
            return True

        for page in range(pages_first):
            best = next((c for c in pool if c.page == page), None)
            if best is not None and (best.score >= compose_module.MIN_SCORE or not chosen):
                take(best)
        while pool and used <= limit - compose_module._ROOM_LEFT:

            def worth(c):  # type: ignore[no-untyped-def]
                return c.score - redundancy * max((_overlap(c, d) for d in chosen), default=0.0)

            best = max(pool, key=worth)
            if worth(best) < compose_module.MIN_SCORE and chosen:
                break
            take(best)
        return chosen

    return select


_IDENT = re.compile(r"\b\w+_\w+\b|\b[A-Z][A-Z0-9_]{2,}\b|\b[a-z]+[A-Z]\w*\b|\b\w+\(")
_CANDIDATES = compose_module.candidates


def recurring_names(weight: float, pages_seen: int = 5):  # type: ignore[no-untyped-def]
    """Quotes naming an identifier (snake_case, UPPER, call) that the first `pages_seen`
    pages' passages name on more than one page score `weight` x (pages naming it - 1) /
    (pages_seen - 1) more: a name several candidate pages agree on is likely the answer."""

    def candidates(question, pages, hits):  # type: ignore[no-untyped-def]
        out = _CANDIDATES(question, pages, hits)
        seen: dict[str, int] = {}
        for page in pages[:pages_seen]:
            for name in {m for p in page.passages for m in _IDENT.findall(p)}:
                seen[name] = seen.get(name, 0) + 1
        span = max(min(len(pages), pages_seen) - 1, 1)
        boosted = []
        for c in out:
            names = _IDENT.findall(f"{c.quote.text} {c.quote.context}")
            agree = max((seen.get(n, 1) - 1 for n in names), default=0) / span
            boosted.append(dataclasses.replace(c, score=c.score + weight * agree))
        boosted.sort(key=lambda c: c.score, reverse=True)
        return boosted

    return candidates


# --- running --------------------------------------------------------------------------


def code_penalty(weight: float):  # type: ignore[no-untyped-def]
    """The shipped `_standing`, less `weight` for a code line (an example's SQL or shell
    line reads badly as an answer and its symbols pass for facts)."""
    shipped = compose_module._standing

    @functools.lru_cache(maxsize=16384)
    def standing(quote):  # type: ignore[no-untyped-def]
        return shipped(quote) - (weight if quote.kind == "code" else 0.0)

    return standing


@contextmanager
def patched(values: dict[str, object]) -> Iterator[None]:
    saved = {name: getattr(compose_module, name) for name in values}
    for name, value in values.items():
        setattr(compose_module, name, value)
    compose_module._standing.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(compose_module, name, value)
        compose_module._standing.cache_clear()


def answer(variant: Variant, question: str, ranked: Ranked) -> tuple[list[str], str]:
    fused = variant.fuse(ranked.dense, ranked.lexical, LIMIT)
    hits = [Hit(str(p), s, ranked.payloads[p]) for p, s in fused]
    hits = variant.rerank(question, hits)
    kept = retrieval.with_page_mates(
        retrieval.diversify(hits, retrieval.PER_PAGE, WANTED), hits, retrieval.QUOTABLE_PER_PAGE
    )
    with patched(variant.compose if variant.current else {**BEFORE, **variant.compose}):
        text, sources = compose(question, kept, TOP_K)
    return pages_of([s.url for s in sources]), text


def run(variant: Variant, questions: list[Question], ranked: list[Ranked]) -> dict[str, float]:
    ranks, texts = [], []
    for q, r in zip(questions, ranked, strict=True):
        pages, text = answer(variant, q.text, r)
        ranks.append(pages)
        texts.append(text)
    out = scores(questions, ranks) | keyword_hits(questions, texts)
    out["max chars"] = max(len(t) for t in texts)
    # Among questions whose right page is first: how often the answer holds a fact.
    firsts = [q for q, p in zip(questions, ranks, strict=True) if p and p[0] in q.expected]
    first_texts = [
        t for q, p, t in zip(questions, ranks, texts, strict=True) if p and p[0] in q.expected
    ]
    out["any|first"] = keyword_hits(firsts, first_texts)["any"] if firsts else math.nan
    return out


def variants() -> list[Variant]:
    v = [
        Variant("shipped", shipped_fuse, current=True),
        *(
            Variant(f"shipped composer, score fusion {w}", score_fusion(w), current=True)
            for w in (0.05, 0.1, 0.2)
        ),
        *(
            Variant(f"shipped composer, rrf lexical weight {w}", weighted_rrf(w), current=True)
            for w in (0.0, 0.3, 0.5)
        ),
        Variant("shipped + page sum 0.4", shipped_fuse, page_sum(0.4), current=True),
        *(
            Variant(
                f"shipped, code {w}",
                shipped_fuse,
                compose={"_standing": code_penalty(w)},
                current=True,
            )
            for w in (0.1, 0.2, 0.4)
        ),
        *(
            Variant(
                f"shipped, length {w}",
                shipped_fuse,
                compose={"LENGTH_PENALTY_PER_300": w},
                current=True,
            )
            for w in (0.1, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5)
        ),
        *(
            Variant(f"shipped, {name} {value}", shipped_fuse, compose={name: value}, current=True)
            for name, values in (
                ("FACT_WEIGHT", (0.3, 0.9)),
                ("PAGE_RANK_PENALTY", (0.1, 0.3)),
                ("MIN_SCORE", (0.0, 0.2)),
                ("QUOTE_RELATIVE_SCORE", (0.4, 0.8)),
                ("REDUNDANCY_WEIGHT", (0.15, 0.5)),
                ("RECURRING_NAME_WEIGHT", (0.2, 0.6)),
                ("CONTEXT_WEIGHT", (0.25, 0.75)),
            )
            for value in values
        ),
        *(
            Variant(
                f"shipped + page sum 0.4, code {w}",
                shipped_fuse,
                page_sum(0.4),
                compose={"_standing": code_penalty(w)},
                current=True,
            )
            for w in (0.1, 0.2, 0.4)
        ),
        Variant("before (619b33a composer)", shipped_fuse),
    ]
    for w in (0.5, 0.3, 0.0):
        v.append(Variant(f"rrf lexical weight {w}", weighted_rrf(w)))
    for k in (30, 60):
        v.append(Variant(f"rrf k={k} lexical 0.7", weighted_rrf(0.7, k=k)))
        v.append(Variant(f"rrf k={k} lexical 0.5", weighted_rrf(0.5, k=k)))
    for w in (0.05, 0.1, 0.2, 0.3):
        v.append(Variant(f"score fusion cos + {w} lex/max", score_fusion(w)))
    for w in (0.1, 0.2, 0.3, 0.5):
        v.append(Variant(f"score fusion minmax(cos) + {w} lex/max", score_fusion(w, "minmax")))
    for beta in (0.1, 0.2, 0.4):
        v.append(Variant(f"page sum beta {beta} (3 hits)", shipped_fuse, page_sum(beta)))
    for w in (0.1, 0.2, 0.4):
        v.append(Variant(f"title boost {w}", shipped_fuse, title_boost(w)))
    for pages in (4, 5):
        v.append(Variant(f"quote {pages} pages", shipped_fuse, compose={"PAGES_QUOTED": pages}))
    for rel in (0.4, 0.0):
        v.append(
            Variant(
                f"quote 5 pages, relative {rel}",
                shipped_fuse,
                compose={"PAGES_QUOTED": 5, "QUOTE_RELATIVE_SCORE": rel},
            )
        )
    for pen in (0.05, 0.1, 0.3):
        v.append(
            Variant(
                f"quote 5 pages, rank penalty {pen}",
                shipped_fuse,
                compose={"PAGES_QUOTED": 5, "PAGE_RANK_PENALTY": pen},
            )
        )
    five = {"PAGES_QUOTED": 5, "PAGE_RANK_PENALTY": 0.1}
    for w in (0.03, 0.05, 0.1):
        v.append(
            Variant(f"score fusion {w} + quote 5 pages penalty 0.1", score_fusion(w), compose=five)
        )
        v.append(Variant(f"score fusion {w} + page sum 0.4", score_fusion(w), page_sum(0.4)))
        v.append(
            Variant(
                f"score fusion {w} + page sum 0.4 + quote 5/0.1",
                score_fusion(w),
                page_sum(0.4),
                five,
            )
        )
    v.append(
        Variant("rrf 0.5 + page sum 0.4 + quote 5/0.1", weighted_rrf(0.5), page_sum(0.4), five)
    )
    for w in (0.1, 0.2, 0.4):
        v.append(
            Variant(
                f"recurring names {w}", shipped_fuse, compose={"candidates": recurring_names(w)}
            )
        )
        v.append(
            Variant(
                f"score fusion 0.05, recurring names {w}",
                score_fusion(0.05),
                compose={"candidates": recurring_names(w)},
            )
        )
        v.append(
            Variant(
                f"score fusion 0.05, recurring names {w}, redundancy 0.3",
                score_fusion(0.05),
                compose={"candidates": recurring_names(w), "select": diverse_select(0.3)},
            )
        )
    for beta in (0.2, 0.4):
        for depth in (2, 5):
            v.append(
                Variant(f"page sum beta {beta} ({depth} hits)", shipped_fuse, page_sum(beta, depth))
            )
    for beta in (0.2, 0.4):
        v.append(
            Variant(
                f"page sum {beta}, recurring names 0.4",
                shipped_fuse,
                page_sum(beta),
                {"candidates": recurring_names(0.4)},
            )
        )
        v.append(
            Variant(
                f"page sum {beta}, redundancy 0.3",
                shipped_fuse,
                page_sum(beta),
                {"select": diverse_select(0.3)},
            )
        )
        v.append(
            Variant(
                f"page sum {beta}, recurring names 0.4, redundancy 0.3",
                shipped_fuse,
                page_sum(beta),
                {"candidates": recurring_names(0.4), "select": diverse_select(0.3)},
            )
        )
    v.append(
        Variant(
            "recurring names 0.4, redundancy 0.3",
            shipped_fuse,
            compose={"candidates": recurring_names(0.4), "select": diverse_select(0.3)},
        )
    )
    for lam in (0.0, 0.3, 0.6, 1.0):
        v.append(
            Variant(f"redundancy {lam}", shipped_fuse, compose={"select": diverse_select(lam)})
        )
    for first in (2, 3):
        for lam in (0.0, 0.6):
            v.append(
                Variant(
                    f"best of first {first} pages first, redundancy {lam}, quote 5/0.1",
                    shipped_fuse,
                    compose={**five, "select": diverse_select(lam, first)},
                )
            )
    for w in (0.05, 0.1):
        for lam in (0.3, 0.6):
            v.append(
                Variant(
                    f"score fusion {w}, redundancy {lam}",
                    score_fusion(w),
                    compose={"select": diverse_select(lam)},
                )
            )
            v.append(
                Variant(
                    f"score fusion {w}, redundancy {lam}, quote 5/0.1",
                    score_fusion(w),
                    compose={**five, "select": diverse_select(lam)},
                )
            )
            v.append(
                Variant(
                    f"score fusion {w}, redundancy {lam}, first 3 pages, quote 5/0.1",
                    score_fusion(w),
                    compose={**five, "select": diverse_select(lam, 3)},
                )
            )
    return v


def check_shipped(store: EdgeStore, model, questions: list[Question], ranked: list[Ranked]) -> None:  # type: ignore[no-untyped-def]
    """The "shipped" variant must match the real store search + rag path."""
    shipped = variants()[0]
    for q in questions[:10]:
        vector = model.embed([q.text])[0]
        hits = store.search(vector, LIMIT, BRAND, encode_query(q.text))
        kept = retrieval.with_page_mates(
            retrieval.diversify(hits, retrieval.PER_PAGE, WANTED), hits, retrieval.QUOTABLE_PER_PAGE
        )
        text, sources = compose(q.text, kept, TOP_K)
        mine = answer(shipped, q.text, ranked[questions.index(q)])
        if (pages_of([s.url for s in sources]), text) != mine:
            sys.exit(f"offline shipped path differs from the real one on {q.text!r}")


def dense_text(payload: dict, form: str) -> str:
    """What the indexing model embeds for a chunk: its text ("chunk" and "alone"), or the
    page title in front of it ("title"; unless the text starts with it already)."""
    text, title = str(payload.get("text", "")), str(payload.get("title", "")).strip()
    if form == "title" and title and not text.startswith(title):
        return f"{title}\n{text}"
    return text


def redensed(store: EdgeStore, form: str, questions: list[Question], vectors: list) -> list[Ranked]:  # type: ignore[type-arg]
    """Each question's rankings with its dense one recomputed over every chunk re-embedded
    as `dense_text(form)` by the indexing model (exhaustive, exact); lexical ones as stored.
    "alone": each chunk in a model call of its own (its vector then depends on nothing else;
    in batches, the int8 graph's one activation scale per call ties it to its batch-mates)."""
    import numpy as np

    points = list(store.export_points())
    # Kept beside the copy: each re-embedding of a manual takes minutes.
    saved = store.path.parent / f"dense-{form}.npy"
    if saved.exists():
        matrix = np.load(saved)
    else:
        model = load_model(StoreSettings(), int8_products=True)
        model.one_per_call = form == "alone"
        matrix = model.embed([dense_text(p.payload, form) for p in points], 32)
        np.save(saved, matrix)
    payloads = {p.id: p.payload for p in points}
    out = []
    for q, vector in zip(questions, vectors, strict=True):
        sims = matrix @ np.asarray(vector, dtype=np.float32)
        top = np.argsort(-sims)[:PREFETCH]
        base = rankings(store, vector, q.text)
        out.append(
            Ranked(
                [(points[i].id, float(sims[i])) for i in top],
                [(str(i), s) for i, s in base.lexical],
                payloads,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a COPY of a data dir")
    parser.add_argument("--corpus", default="postgresql")
    parser.add_argument("--only", default=None, help="variant names, separated by ;")
    parser.add_argument(
        "--dense-text",
        choices=("chunk", "title", "alone"),
        default=None,
        help="re-embed every chunk (chunk: as indexed; title: the page title in front; alone: "
        "as indexed, one chunk per model call) and rank the dense side exhaustively over "
        "those vectors",
    )
    parser.add_argument(
        "--questions-packaged",
        action="store_true",
        help="embed the questions with the packaged graph (HELPLINE_QUERY_INT8=false); by "
        "default they run as rag runs them",
    )
    args = parser.parse_args()
    questions = load_questions(QUESTIONS / f"{args.corpus}.jsonl")
    settings = StoreSettings(**({"query_int8": False} if args.questions_packaged else {}))
    model = load_question_model(settings)
    store = EdgeStore(args.data / "qdrant" / "helpline", model.dim)
    try:
        vectors = [model.embed([q.text])[0] for q in questions]
        ranked = [rankings(store, v, q.text) for q, v in zip(questions, vectors, strict=True)]
        check_shipped(store, model, questions, ranked)
        if args.dense_text:
            ranked = redensed(store, args.dense_text, questions, vectors)
    finally:
        store.close()
    chosen = variants()
    if args.only:
        names = set(args.only.split(";"))
        chosen = [v for v in chosen if v.name in names]
    print(f"{len(questions)} questions of {args.corpus}.jsonl; index {args.data}")
    cols = ("recall@1", "recall@5", "mrr@10", "any", "all", "any|first", "max chars")
    print(f"| variant | {' | '.join(cols)} |")
    print(f"|---|{'---|' * len(cols)}")
    for variant in chosen:
        fig = run(variant, questions, ranked)
        cells = " | ".join(f"{fig[c]:.0f}" if c == "max chars" else f"{fig[c]:.3f}" for c in cols)
        print(f"| {variant.name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
