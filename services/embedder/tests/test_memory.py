"""The embedder's memory stays bounded, whatever the lengths of the texts it embeds.

A fresh process loads both graphs (the int8 one the embedder indexes with, niced as in
the service, and the packaged one rag asks with), then embeds a few thousand chunks of
every length up to the model's 256 tokens through a `ChunkPool`, as pages arrive in a
crawl, and a few hundred calls of 1-32 questions of every length. Its RSS is read from
/proc before and after, and its high-water mark (VmHWM, reset once the graphs are
loaded) shows the peak. With onnxruntime's defaults the process grew by about a GB
within a few hundred chunks (each new batch shape kept memory); bounded, it ends where
it started, give or take a few tens of MB, and its peak stays a few hundred MB above.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpline.common.embedding import BATCH_TOKENS, Embedder, _batches, quantized_model
from helpline.common.settings import StoreSettings

SITE = Path(__file__).resolve().parents[3] / "tests" / "site"
#: Generous margins over what was measured: growth 16 MB, peak 227 MB above (onnxruntime's
#: defaults: 1,063 MB growth after 384 chunks and 100 calls of questions).
MAX_GROWTH_MB = 150
MAX_PEAK_MB = 600

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="reads Linux's /proc"
)

CHILD = r"""
import asyncio, ctypes, html, json, random, re, sys
from pathlib import Path
from helpline.common.embedding import Embedder
from helpline.embedder.batching import ChunkPool

site, cache, bounded, chunks, calls = sys.argv[1:6]
chunks, calls = int(chunks), int(calls)
options = {} if bounded == "1" else {"batch_tokens": 1 << 30, "bounded_memory": False}

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")}

words = []
for page in sorted(Path(site).rglob("*.html")):
    text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", page.read_text(), flags=re.S)
    words += html.unescape(re.sub(r"<[^>]+>", " ", text)).split()
rng = random.Random(23)
def text(count):
    start = rng.randrange(len(words))
    return " ".join((words * 2)[start : start + count])

index = Embedder.load(threads=2, niceness=10, int8_products=True, cache_dir=Path(cache), **options)
questions = Embedder.load(threads=2, **options)
index.embed(["warm-up"]); questions.embed(["warm-up"])
ctypes.CDLL(None).malloc_trim(0)  # what loading left behind is not the work's
before = status()["VmRSS"]
open("/proc/self/clear_refs", "w").write("5")  # VmHWM from here on

async def crawl():
    pool = ChunkPool(index, max_chunks=256, wait_s=0.02)
    pages, left = [], chunks
    while left > 0:
        size = min(left, rng.randint(1, 24))  # a page's chunks, each of its own length
        # Every length up to past the model's 256 tokens, most of them shorter (quicker).
        pages.append([text(3 + int(237 * rng.random() ** 2)) for _ in range(size)])
        left -= size
    for start in range(0, len(pages), 32):  # 32 pages in hand, as the embedder holds
        await asyncio.gather(*(pool.embed_async(p) for p in pages[start : start + 32]))
    await pool.close()

asyncio.run(crawl())
after_chunks = status()["VmRSS"]
for _ in range(calls):
    questions.embed([text(rng.randint(2, 60)) for _ in range(rng.choice([1, 1, 2, 4, 8, 32]))])
end = status()
index.close()
print(json.dumps({"before": before, "after_chunks": after_chunks, "end": end["VmRSS"],
                  "peak": end["VmHWM"]}))
"""


def embedder_memory(tmp_path: Path, *, bounded: bool, chunks: int, calls: int) -> dict[str, int]:
    """RSS (MB) of a fresh process before and after the work, and its peak."""
    models = tmp_path / "models"
    with quantized_model(models):  # built here: the child only loads it
        pass
    args = [str(SITE), str(models), "1" if bounded else "0", str(chunks), str(calls)]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def within_bounds(figures: dict[str, int]) -> bool:
    return (
        figures["end"] - figures["before"] <= MAX_GROWTH_MB
        and figures["peak"] - figures["before"] <= MAX_PEAK_MB
    )


def test_memory_after_thousands_of_chunks_stays_bounded(tmp_path: Path) -> None:
    figures = embedder_memory(tmp_path, bounded=True, chunks=2000, calls=300)
    assert figures["after_chunks"] - figures["before"] <= MAX_GROWTH_MB, figures
    assert figures["end"] - figures["before"] <= MAX_GROWTH_MB, figures
    assert figures["peak"] - figures["before"] <= MAX_PEAK_MB, figures


def test_the_bound_catches_onnxruntime_defaults(tmp_path: Path) -> None:
    """The same measure fails the model as it ran before: the test above can fail."""
    figures = embedder_memory(tmp_path, bounded=False, chunks=384, calls=100)
    assert not within_bounds(figures), figures


def test_the_setting_defaults_to_the_model_bound() -> None:
    assert StoreSettings().embed_batch_tokens == BATCH_TOKENS


def test_batches_hold_at_most_the_token_bound() -> None:
    lengths = [3, 250, 40, 256, 12, 100, 100, 7, 300, 64] * 7
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = list(_batches(order, lengths, 32, 2048))
    assert [i for batch in batches for i in batch] == order  # every text once, in order
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) <= 32
        assert len(batch) == 1 or len(batch) * width <= 2048, (len(batch), width)
    assert any(len(batch) == 32 for batch in batches)  # short texts still fill a batch


def test_bounded_batches_give_the_same_vectors() -> None:
    sentence = "The server writes each change to the log before it changes the table. "
    texts = [(sentence * (1 + n % 23))[: 40 + 37 * n] for n in range(48)]
    bounded = Embedder.load(threads=2)
    unbounded = Embedder.load(threads=2, batch_tokens=1 << 30, bounded_memory=False)
    assert bounded.batch_tokens == BATCH_TOKENS
    cosines = (bounded.embed(texts) * unbounded.embed(texts)).sum(axis=1)
    assert cosines.min() > 0.9999
