"""Retrieval and answer quality of Helpline against a plain BM25 baseline, per corpus.

Serves a documentation site on 127.0.0.1 (a corpus: the PostgreSQL 15 manual from Debian's
postgresql-doc-15, or SQLite's documentation from sqlite3-doc, installed here if missing
and possible; or any folder with `--site`), runs the real `helpline up`, indexes the site
through the REST API, asks every question of a JSONL file (`{"question": ...,
"expected": ["/page.html", ...], "keywords": ["fact as written on the page", ...]}`)
through `POST /api/v1/query`, and scores

- the ranked sources: a question counts as found at rank r when the r-th source is one of
  its expected pages (recall@1, recall@5, MRR@10);
- the answer text: whether it holds any, and all, of the question's keywords (exact case,
  whitespace folded), and its length.

In the same run, the same chunks (read back from the index) are ranked by a plain BM25
(Okapi, k1 1.5, b 0.75, lower-cased words, no stemming), whose answer is its top 3 chunks
trimmed to the longest answer Helpline may give, and, for diagnosis, by the index's dense
vectors alone and its lexical vectors alone.

    uv run python bench/retrieval_eval.py                    # crawl the PostgreSQL manual
    uv run python bench/retrieval_eval.py --corpus sqlite    # SQLite's documentation
    uv run python bench/retrieval_eval.py --sample 300       # expected pages + 300 others
    uv run python bench/retrieval_eval.py --data-dir D       # keep the index in D; reuse it
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import qdrant_edge as edge
from query_latency import BRAND, MANUAL, ensure_manual
from results import capture

from helpline.common.embedding import Embedder
from helpline.common.lexical import SparseVector, encode_query
from helpline.common.records import TERMINAL_STATUSES
from helpline.common.vectors import SPARSE_VECTOR, EdgeStore, Hit
from helpline.rag.compose import ANSWER_LIMIT
from helpline.testing import HelplineUp, serve_site

QUESTIONS = Path(__file__).parent / "questions"
SQLITE_DOCS = Path("/usr/share/doc/sqlite3")
#: corpus -> (site folder, Debian package that installs it)
CORPORA = {"postgresql": (MANUAL, "postgresql-doc-15"), "sqlite": (SQLITE_DOCS, "sqlite3-doc")}
TOP_K = 10
#: The longest answer the extractive composer gives (and the baseline's answer is cut to).
ANSWER_CHARS = ANSWER_LIMIT
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Question:
    text: str
    expected: frozenset[str]
    keywords: tuple[str, ...] = ()


def load_questions(path: Path) -> list[Question]:
    questions = []
    for line in path.read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            questions.append(
                Question(
                    item["question"],
                    frozenset(item["expected"]),
                    tuple(item.get("keywords", ())),
                )
            )
    return questions


def ensure_site(corpus: str) -> Path:
    """The corpus's folder, its Debian package installed first when missing and possible."""
    if corpus == "postgresql":
        return ensure_manual()
    folder, package = CORPORA[corpus]
    missing = not folder.joinpath("index.html").exists()
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {package} (Debian) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)
    if not folder.joinpath("index.html").exists():
        sys.exit(f"no documentation at {folder}: install Debian's {package}")
    return folder


def _folded(text: str) -> str:
    return " ".join(text.split())


def keyword_hits(questions: list[Question], answers: list[str]) -> dict[str, float]:
    """Share of answers holding any, and all, of their question's keywords (exact case)."""
    scored = [(q, _folded(a)) for q, a in zip(questions, answers, strict=True) if q.keywords]
    if not scored:
        return {"any": math.nan, "all": math.nan}
    found = [[_folded(k) in answer for k in q.keywords] for q, answer in scored]
    return {
        "any": sum(any(f) for f in found) / len(found),
        "all": sum(all(f) for f in found) / len(found),
    }


def trimmed(text: str, limit: int = ANSWER_CHARS) -> str:
    text = _folded(text)
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


def scores(questions: list[Question], rankings: list[list[str]]) -> dict[str, float]:
    """recall@1, recall@5 and MRR@10 of page-path rankings (one per question, best first)."""
    firsts = []
    for question, ranking in zip(questions, rankings, strict=True):
        rank = next(
            (i for i, path in enumerate(ranking[:TOP_K]) if path in question.expected), None
        )
        firsts.append(rank)
    n = len(questions)
    return {
        "recall@1": sum(r is not None and r < 1 for r in firsts) / n,
        "recall@5": sum(r is not None and r < 5 for r in firsts) / n,
        "mrr@10": sum(1 / (r + 1) for r in firsts if r is not None) / n,
    }


def pages_of(urls: list[str]) -> list[str]:
    """Unique page paths in first-seen order."""
    return list(dict.fromkeys(urlparse(url).path for url in urls))


class Bm25:
    """Okapi BM25 over chunks; a page is ranked by its best chunk."""

    def __init__(self, chunks: list[dict], k1: float = 1.5, b: float = 0.75) -> None:
        self.urls = [str(c["url"]) for c in chunks]
        self.texts = [str(c["text"]) for c in chunks]
        self.docs = [Counter(_WORD.findall(str(c["text"]).lower())) for c in chunks]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / max(len(self.docs), 1)
        df: Counter[str] = Counter()
        for doc in self.docs:
            df.update(doc.keys())
        n = len(self.docs)
        self.idf = {t: math.log((n - f + 0.5) / (f + 0.5) + 1) for t, f in df.items()}
        self.k1, self.b = k1, b
        self.postings: dict[str, list[int]] = {}
        for i, doc in enumerate(self.docs):
            for term in doc:
                self.postings.setdefault(term, []).append(i)

    def rank(self, question: str) -> list[str]:
        best = self._chunks(question)
        return pages_of([self.urls[i] for i in best[: TOP_K * 20]])

    def answer(self, question: str, chunks: int = 3) -> str:
        """Its top `chunks` chunks, joined and trimmed to `ANSWER_CHARS`."""
        return trimmed(" ".join(self.texts[i] for i in self._chunks(question)[:chunks]))

    def _chunks(self, question: str) -> list[int]:
        totals: dict[int, float] = {}
        for term in set(_WORD.findall(question.lower())):
            for i in self.postings.get(term, []):
                tf = self.docs[i][term]
                norm = self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg)
                totals[i] = totals.get(i, 0.0) + self.idf[term] * tf * (self.k1 + 1) / (tf + norm)
        return sorted(totals, key=lambda i: totals[i], reverse=True)


def wait_task(client: httpx.Client, task_id: str) -> dict:
    started = time.perf_counter()
    last = -1
    while True:
        record = client.get(f"/api/v1/tasks/{task_id}").json()
        progress = record.get("progress") or {}
        done = progress.get("done", 0)
        if done // 100 != last:
            last = done // 100
            print(
                f"  {record['status']}: {done}/{progress.get('total', 0)} pages "
                f"after {time.perf_counter() - started:.0f}s",
                flush=True,
            )
        if record["status"] in TERMINAL_STATUSES:
            return record
        time.sleep(1)


def index_site(client: httpx.Client, site: str, root: Path, args: argparse.Namespace) -> dict:
    if args.sample is None:
        body: dict = {
            "url": f"{site}/index.html",
            "brand": BRAND,
            "max_pages": args.max_pages,
            "max_depth": 20,
        }
        print(f"crawling {site} (max {args.max_pages} pages) ...", flush=True)
        response = client.post("/api/v1/crawl", json=body)
    else:
        expected = sorted({p for q in load_questions(args.questions) for p in q.expected})
        others = sorted(f"/{p.name}" for p in root.glob("*.html") if f"/{p.name}" not in expected)
        chosen = expected + random.Random(7).sample(others, min(args.sample, len(others)))
        print(f"indexing {len(expected)} expected pages + {len(chosen) - len(expected)} others ...")
        response = client.post(
            "/api/v1/scrape/batch",
            json={"urls": [site + p for p in chosen], "brand": BRAND, "max_concurrent": 8},
        )
    response.raise_for_status()
    record = wait_task(client, response.json()["task_id"])
    print(f"  result: {record.get('result')}", flush=True)
    return record


def ask_all(
    client: httpx.Client, questions: list[Question]
) -> tuple[list[list[str]], list[str], float]:
    rankings = []
    answers = []
    durations = []
    for question in questions:
        response = client.post(
            "/api/v1/query",
            json={"question": question.text, "brand": BRAND, "top_k": TOP_K, "cache": False},
        )
        response.raise_for_status()
        body = response.json()
        durations.append(body["duration_ms"])
        rankings.append(pages_of([s["url"] for s in body["sources"]]))
        answers.append(body["answer"])
    return rankings, answers, sorted(durations)[len(durations) // 2]


@contextmanager
def data_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="helpline-eval-") as tmp:
        yield Path(tmp) / "data"


def read_chunks(index: Path) -> list[dict]:
    shard = edge.EdgeShard.load(str(index))
    chunks: list[dict] = []
    offset = None
    try:
        while True:
            records, offset = shard.scroll(
                edge.ScrollRequest(offset=offset, limit=1024, with_payload=["url", "text"])
            )
            chunks.extend(r.payload or {} for r in records)
            if offset is None:
                return chunks
    finally:
        shard.close()


def single_rankings(index: Path, questions: list[Question]) -> dict[str, list[list[str]]]:
    """Each question ranked by the index's dense vectors alone and by its lexical ones alone."""
    model = Embedder.load()
    store = EdgeStore(index, model.dim)
    try:
        out: dict[str, list[list[str]]] = {"dense only": [], "lexical only": []}
        for question in questions:
            vector = model.embed([question.text])[0]
            dense = store.search(vector, TOP_K * 8, BRAND)
            lexical = _lexical_only(store, encode_query(question.text))
            out["dense only"].append(pages_of([str(h.payload["url"]) for h in dense]))
            out["lexical only"].append(pages_of([str(h.payload["url"]) for h in lexical]))
        return out
    finally:
        store.close()


def _lexical_only(store: EdgeStore, sparse: SparseVector) -> list[Hit]:
    # The store searches dense or hybrid; the shard it holds answers a sparse-only query.
    request = edge.QueryRequest(
        limit=TOP_K * 8,
        query=edge.Query.Nearest(
            edge.SparseVector(sparse.indices, sparse.values), using=SPARSE_VECTOR
        ),
        filter=edge.Filter(must=[edge.FieldCondition("brand", match=edge.MatchValue(BRAND))]),
        with_payload=["url"],
    )
    return [Hit(str(p.id), p.score, p.payload or {}) for p in store._shard.query(request)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="postgresql")
    parser.add_argument("--site", type=Path, default=None, help="folder of HTML pages to serve")
    parser.add_argument(
        "--questions", type=Path, default=None, help="JSONL questions (default: the corpus's)"
    )
    parser.add_argument("--max-pages", type=int, default=1200, help="crawl limit")
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        help="index only the expected pages plus this many others (a batch, not a crawl)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the index here; reuse it")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for helpline up (e.g. HELPLINE_QUERY_INT8=false); repeatable",
    )
    args = parser.parse_args()
    if args.questions is None:
        args.questions = QUESTIONS / f"{args.corpus}.jsonl"

    root = ensure_site(args.corpus) if args.site is None else args.site
    questions = load_questions(args.questions)
    with data_dir(args.data_dir) as data, serve_site(root) as site:
        index = data / "qdrant" / "helpline"
        reuse = index.is_dir() and any(index.iterdir())
        env = {"HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1", "HELPLINE_LOG_LEVEL": "WARNING"}
        env.update(item.split("=", 1) for item in args.env)
        with HelplineUp(data, env) as up, up.client(60) as client:
            if reuse:
                print(f"reusing the index in {index}", flush=True)
            else:
                started = time.perf_counter()
                index_site(client, site, root, args)
                print(f"indexed in {time.perf_counter() - started:.0f} s", flush=True)
            helpline, answers, median_ms = ask_all(client, questions)
        chunks = read_chunks(index)
        # The site was served on a port of this run; compare paths only.
        baseline = Bm25(chunks)
        answered = {
            "helpline (hybrid, via gateway)": answers,
            "bm25 baseline (top 3 chunks)": [baseline.answer(q.text) for q in questions],
        }
        systems = {
            "helpline (hybrid, via gateway)": helpline,
            "bm25 baseline": [baseline.rank(q.text) for q in questions],
            **single_rankings(index, questions),
        }

    pages = len({c["url"] for c in chunks})
    printed = capture("retrieval_eval")
    print()
    print(
        f"{len(questions)} questions from {args.questions.name}; index: {pages} pages, "
        f"{len(chunks)} chunks; query p50 {median_ms:.1f} ms (gateway-measured)"
    )
    print(f"{'system':<32} {'recall@1':>9} {'recall@5':>9} {'MRR@10':>8}")
    for name, rankings in systems.items():
        figures = scores(questions, rankings)
        print(
            f"{name:<32} {figures['recall@1']:>9.3f} {figures['recall@5']:>9.3f} "
            f"{figures['mrr@10']:>8.3f}"
        )
    print(f"\nanswers (at most {ANSWER_CHARS} characters) holding the question's keywords:")
    print(f"{'system':<32} {'any':>7} {'all':>7} {'mean chars':>11} {'max chars':>10}")
    for name, texts in answered.items():
        hits = keyword_hits(questions, texts)
        lengths = [len(t) for t in texts]
        print(
            f"{name:<32} {hits['any']:>7.3f} {hits['all']:>7.3f} "
            f"{sum(lengths) / len(lengths):>11.0f} {max(lengths):>10}"
        )
    misses = [
        q.text for q, r in zip(questions, helpline, strict=True) if not q.expected & set(r[:5])
    ]
    if misses:
        print("\nnot in helpline's top 5:")
        for text in misses:
            print(f"  - {text}")
    sys.stdout.flush()
    printed.save()


if __name__ == "__main__":
    main()
