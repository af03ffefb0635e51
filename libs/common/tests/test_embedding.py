from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from helpline.common.embedding import MAX_TOKENS, Embedder, tokenizer_path


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load(threads=2)


def _words(count: int, start: int = 0) -> str:
    return " ".join(f"word{i}" for i in range(start, start + count))


def test_model_shape(embedder: Embedder) -> None:
    assert embedder.dim == 384
    assert embedder.model_id == "all-MiniLM-L6-v2-onnx-int8"
    assert embedder.providers[-1] == "CPUExecutionProvider"


def test_similar_sentences_are_closer_than_unrelated(embedder: Embedder) -> None:
    question, paraphrase, unrelated = embedder.embed(
        [
            "How do I reset my password?",
            "Steps to recover account credentials",
            "The weather in Paris is sunny",
        ]
    )
    assert float(question @ paraphrase) > float(question @ unrelated) + 0.2


def test_vectors_are_unit_float32(embedder: Embedder) -> None:
    vectors = embedder.embed(["short", "a somewhat longer sentence about billing", ""])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_order_is_kept_when_lengths_differ(embedder: Embedder) -> None:
    texts = [
        _words(120),
        "Cancel a subscription",
        _words(40, start=500),
        "Where can I download my invoice as a PDF file?",
        "Hi",
        _words(80, start=900),
    ]
    together = embedder.embed(texts, batch_size=2)
    alone = np.vstack([embedder.embed([text]) for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-3)
    # The texts differ enough that a shuffled row could not pass the comparison above.
    similarity = together @ alone.T
    assert list(similarity.argmax(axis=1)) == list(range(len(texts)))


def test_empty_input(embedder: Embedder) -> None:
    vectors = embedder.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_truncates_at_256_tokens_not_128(embedder: Embedder) -> None:
    # "wordN" is two word pieces, so 80 words is over 128 tokens and under 256.
    medium = _words(80)
    long = _words(300)
    medium_plus, long_plus = medium + " refund policy", long + " refund policy"
    vectors = embedder.embed([medium, medium_plus, long, long_plus])
    tokenizer = Tokenizer.from_file(str(tokenizer_path()))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    assert 128 < len(tokenizer.encode(medium_plus).ids) < MAX_TOKENS
    assert len(tokenizer.encode(long).ids) > MAX_TOKENS
    assert float(vectors[0] @ vectors[1]) < 0.9999
    np.testing.assert_allclose(vectors[2], vectors[3], atol=1e-6)


def test_concurrent_calls_match_serial(embedder: Embedder) -> None:
    jobs = [
        [f"question {i} about order {j} and its delivery" for j in range(i + 1)] for i in range(8)
    ]
    serial = [embedder.embed(texts) for texts in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(embedder.embed, jobs))
    for expected, got in zip(serial, parallel, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_unavailable_provider_falls_back_to_cpu() -> None:
    embedder = Embedder.load(threads=1, providers=["NoSuchExecutionProvider"])
    assert embedder.providers == ["CPUExecutionProvider"]
    assert embedder.embed(["hello"]).shape == (1, 384)


def test_batch_size_must_be_positive(embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        embedder.embed(["hello"], batch_size=0)


async def test_a_niced_model_embeds_the_same_at_a_lower_priority(embedder: Embedder) -> None:
    import asyncio
    import os
    import threading

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    niced = Embedder.load(threads=2, niceness=7)
    try:
        texts = ["Hold the reset button for twelve seconds.", "Firmware updates install at 3 am."]
        vectors = await niced.embed_async(texts)
        np.testing.assert_allclose(vectors, embedder.embed(texts), atol=1e-5)
        assert niced._executor is not None
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(niced._executor, priority) == min(19, priority() + 7)
        # onnxruntime's own threads were started from a niced thread: they are niced too.
        assert _thread_niceness().count(min(19, priority() + 7)) >= 2
        # Its pool threads yield rather than spin; the question model's keep spinning.
        assert _spinning(niced) == "0"
        assert _spinning(embedder) == "1"
    finally:
        niced.close()
    # Without niceness, embed_async runs in the default executor and gives the same vectors.
    np.testing.assert_allclose(await embedder.embed_async(texts), vectors, atol=1e-5)


def _spinning(model: Embedder) -> str:
    options = model._session.get_session_options()
    return str(options.get_session_config_entry("session.intra_op.allow_spinning"))


def _thread_niceness() -> list[int]:
    """The nice value of every thread of this process (Linux)."""
    from pathlib import Path

    return [
        int(stat.read_text().rsplit(")", 1)[1].split()[16])
        for stat in Path("/proc/self/task").glob("*/stat")
    ]


def test_the_int8_indexing_graph_stays_close_to_the_packaged_one(
    embedder: Embedder, tmp_path: Path
) -> None:
    fast = Embedder.load(threads=2, int8_products=True, cache_dir=tmp_path)
    assert fast.model_id != embedder.model_id
    assert list(tmp_path.glob("*.onnx")), "the int8 graph is kept in the cache folder"
    texts = [
        "How do I reset my password?",
        _words(60),
        "Where can I download my invoice as a PDF file?",
        "Steps to recover account credentials",
    ]
    exact, quick = embedder.embed(texts), fast.embed(texts)
    closeness = (exact * quick).sum(axis=1)
    assert closeness.min() > 0.98, closeness
    # Close to its own text, not to another one's.
    assert list((quick @ exact.T).argmax(axis=1)) == list(range(len(texts)))
    # Built once: a second load reuses the file.
    again = Embedder.load(threads=1, int8_products=True, cache_dir=tmp_path)
    np.testing.assert_allclose(again.embed(texts[:1]), fast.embed(texts[:1]), atol=1e-5)


def test_a_text_on_the_int8_graph_gets_one_vector_whoever_is_embedded_beside_it(
    tmp_path: Path,
) -> None:
    from helpline.common.knowledge import load_model, load_question_model
    from helpline.common.settings import StoreSettings

    question = "How long do I hold the reset button?"
    others = [_words(40), "Where is my invoice?", "error FW-409 after a firmware update"]
    batched = Embedder.load(threads=1, int8_products=True, cache_dir=tmp_path)
    assert batched.one_per_call, "the int8 graph runs every text alone"
    alone = batched.embed([question])[0]
    # Batched on the int8 graph the activations would share a scale: the vector moves.
    batched.one_per_call = False
    assert not np.array_equal(batched.embed([question, *others])[0], alone)
    settings = StoreSettings(model_cache_dir=tmp_path, query_int8=True)
    for model in (load_question_model(settings), load_model(settings, int8_products=True)):
        assert model.one_per_call
        assert "int8" in model.model_id
        for mates in ([], others[:1], others, [*others, *others]):
            np.testing.assert_array_equal(model.embed([question, *mates])[0], alone)
            np.testing.assert_array_equal(model.embed([*mates, question])[-1], alone)
