"""Embedding throughput of the model Helpline ships, per onnxruntime execution provider.

Chunks are cut from the sample documentation site (tests/site) the way the scraper cuts
them (about 700 characters), so the token lengths are realistic. Prints chunks/s for
batch sizes 32 and 128, and the latency of embedding one question.

    uv run python bench/embedding.py [--providers CPUExecutionProvider CUDAExecutionProvider]
"""

from __future__ import annotations

import argparse
import html
import re
import statistics
import time
from pathlib import Path

import onnxruntime as ort
from results import capture

from helpline.common.embedding import Embedder

SITE = Path(__file__).resolve().parent.parent / "tests" / "site"


def corpus_chunks(count: int, max_chars: int = 700) -> list[str]:
    """`count` chunks of real documentation prose, about `max_chars` each."""
    sentences: list[str] = []
    for page in sorted(SITE.rglob("*.html")):
        text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", page.read_text(), flags=re.S)
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
        sentences += [
            s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if len(s) > 20
        ]
    chunks: list[str] = []
    current = ""
    i = 0
    while len(chunks) < count:
        sentence = sentences[i % len(sentences)]
        i += 1
        if len(current) + len(sentence) > max_chars:
            chunks.append(current.strip())
            current = ""
        current += " " + sentence
    return chunks


def measure(providers: list[str], chunks: list[str], threads: int | None) -> None:
    model = Embedder.load(threads=threads, providers=providers)
    used = model.providers[0]
    model.embed(chunks[:64])  # warm-up (CUDA graph capture, allocator, kernels)
    for batch in (32, 128):
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            model.embed(chunks, batch_size=batch)
            runs.append(time.perf_counter() - started)
        print(
            f"{used}: {len(chunks) / statistics.median(runs):8.1f} chunks/s  (batch {batch}, {len(chunks)} chunks)"
        )
    question = ["How long do I hold the reset button to restore factory settings?"]
    latencies = []
    for _ in range(200):
        started = time.perf_counter()
        model.embed(question)
        latencies.append((time.perf_counter() - started) * 1000)
    print(f"{used}: one question {statistics.median(latencies):.2f} ms p50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", nargs="+", default=["CPUExecutionProvider"])
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if "CUDAExecutionProvider" in args.providers and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds CUDA and cuDNN from the nvidia-* wheels only once asked to.
        ort.preload_dlls()
    chunks = corpus_chunks(args.chunks)
    lengths = [len(c) for c in chunks]
    printed = capture("embedding")
    print(f"onnxruntime {ort.__version__}, available: {', '.join(ort.get_available_providers())}")
    print(f"{len(chunks)} chunks, {statistics.mean(lengths):.0f} characters on average")
    for provider in args.providers:
        if provider not in ort.get_available_providers():
            print(f"{provider}: not available in this onnxruntime build")
            continue
        measure([provider], chunks, args.threads)
    printed.save()


if __name__ == "__main__":
    main()
