"""Embedding throughput of the model Helpline ships, per onnxruntime execution provider.

Chunks are cut from a documentation site (tests/site by default; `--site` another folder
of HTML, such as the PostgreSQL manual) the way the scraper cuts them (about 700
characters), so the token lengths are realistic. Prints chunks/s for batch sizes 32 and
128, and the latency of embedding one question, for the packaged graph and, on the CPU,
the int8 graph (indexing and questions). Each graph runs in two memory configurations in
the same run, their rounds alternating: "bounded" (Helpline's: batches of at most
`BATCH_TOKENS` padded tokens, no memory patterns, the arena shrunk after a large call) and
"arena" (onnxruntime's defaults, batches bounded in texts only: how it ran before). The
int8 graph runs each text alone (the batch size does not apply), beside "batched
(before)": the same graph in length-sorted batches on `--threads` threads, as it indexed
until 2026-12-06.

    uv run python bench/embedding.py [--providers CPUExecutionProvider CUDAExecutionProvider]
        [--site DIR] [--chunks 512] [--rounds 3] [--batches 32 128]
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

from helpline.common.embedding import BATCH_TOKENS, Embedder

SITE = Path(__file__).resolve().parent.parent / "tests" / "site"
#: The memory configurations compared: name -> `Embedder.load` options.
CONFIGS = {
    "bounded": {"batch_tokens": BATCH_TOKENS, "bounded_memory": True},
    "arena": {"batch_tokens": 1 << 30, "bounded_memory": False},
}


def corpus_chunks(count: int, max_chars: int = 700, site: Path = SITE) -> list[str]:
    """`count` chunks of real documentation prose, about `max_chars` each."""
    sentences: list[str] = []
    for page in sorted(site.rglob("*.html")):
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


def measure(
    providers: list[str], chunks: list[str], args: argparse.Namespace, *, int8: bool
) -> list[str]:
    """Chunks/s and question latency of one graph in every configuration, alternating."""
    models = {
        name: Embedder.load(threads=args.threads, providers=providers, int8_products=int8, **opts)
        for name, opts in CONFIGS.items()
    }
    if int8:
        # Since 2026-12-06 the int8 graph runs each text alone, `threads` texts at once;
        # before, it ran length-sorted batches on `threads` threads.
        models["batched (before)"] = Embedder.load(
            threads=args.threads, providers=providers, int8_products=True, batched=True
        )
    graph = "int8 graph" if int8 else "packaged graph"
    used = next(iter(models.values())).providers[0]
    for model in models.values():
        model.embed(chunks[:64])  # warm-up (CUDA graph capture, allocator, kernels)
    seconds: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for batch in args.batches:
            for name, model in models.items():
                started = time.perf_counter()
                model.embed(chunks, batch_size=batch)
                seconds.setdefault((name, batch), []).append(time.perf_counter() - started)
    question = ["How long do I hold the reset button to restore factory settings?"]
    latencies: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(200):
        for name, model in models.items():
            started = time.perf_counter()
            model.embed(question)
            latencies[name].append((time.perf_counter() - started) * 1000)
    lines = []
    for batch in args.batches:
        rates = {n: len(chunks) / statistics.median(seconds[(n, batch)]) for n in models}
        for name, rate in rates.items():
            lines.append(
                f"{used}, {graph}, {name}: {rate:8.1f} chunks/s  (batch {batch}, {len(chunks)} "
                f"chunks, median of {args.rounds})"
            )
        lines.append(f"  bounded / arena: {rates['bounded'] / rates['arena']:.3f}")
        if "batched (before)" in rates:
            lines.append(f"  alone / batched: {rates['bounded'] / rates['batched (before)']:.3f}")
    for name in models:
        p50 = statistics.median(latencies[name])
        lines.append(f"{used}, {graph}, {name}: one question {p50:.2f} ms p50")
    for model in models.values():
        model.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", nargs="+", default=["CPUExecutionProvider"])
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--site", type=Path, default=SITE, help="a folder of HTML pages")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args()
    if "CUDAExecutionProvider" in args.providers and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds CUDA and cuDNN from the nvidia-* wheels only once asked to.
        ort.preload_dlls()
    chunks = corpus_chunks(args.chunks, site=args.site)
    lengths = [len(c) for c in chunks]
    results: list[str] = []
    for provider in args.providers:
        if provider not in ort.get_available_providers():
            results.append(f"{provider}: not available in this onnxruntime build")
            continue
        results += measure([provider], chunks, args, int8=False)
        if provider == "CPUExecutionProvider":
            results += measure([provider], chunks, args, int8=True)
    printed = capture("embedding")
    print(f"onnxruntime {ort.__version__}, available: {', '.join(ort.get_available_providers())}")
    print(
        f"{len(chunks)} chunks from {args.site}, {statistics.mean(lengths):.0f} characters on average"
    )
    print(
        f"bounded: at most {BATCH_TOKENS} padded tokens a batch, memory handed back; arena: as before"
    )
    print("\n".join(results))
    printed.save()


if __name__ == "__main__":
    main()
