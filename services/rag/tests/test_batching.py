"""Questions asked while the model is busy share its next call; cached ones never wait."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from helpline.common.embedding import Embedder
from helpline.rag.batching import QuestionBatcher
from helpline.rag.embedcache import CachedQueryEmbedder


class GatedModel(Embedder):
    """Records its calls; each call waits until the test opens the gate."""

    def __init__(self, fail: bool = False) -> None:
        self.model_id = "gated"
        self.dim = 2
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.fail = fail

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
        self.calls.append(list(texts))
        assert self.gate.wait(5)
        if self.fail:
            raise RuntimeError("model broke")
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


async def until(condition: object, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline
        await asyncio.sleep(0.001)


async def test_questions_waiting_for_the_model_share_one_call() -> None:
    model = GatedModel()
    batcher = QuestionBatcher(model)
    first = asyncio.create_task(batcher.embed("a"))
    await until(lambda: len(model.calls) == 1)
    # The model is busy with "a": these three wait together for the next call.
    rest = [asyncio.create_task(batcher.embed(q)) for q in ("bb", "ccc", "dddd")]
    await asyncio.sleep(0.01)
    model.gate.set()
    vectors = await asyncio.gather(first, *rest)
    assert model.calls == [["a"], ["bb", "ccc", "dddd"]]
    assert [v.tolist() for v in vectors] == [[1, 1], [2, 1], [3, 1], [4, 1]]
    assert batcher.calls == 2


async def test_a_batch_holds_at_most_max_batch_questions() -> None:
    model = GatedModel()
    batcher = QuestionBatcher(model, max_batch=2)
    first = asyncio.create_task(batcher.embed("a"))
    await until(lambda: len(model.calls) == 1)
    rest = [asyncio.create_task(batcher.embed(q)) for q in ("b", "c", "d")]
    await asyncio.sleep(0.01)
    model.gate.set()
    await asyncio.gather(first, *rest)
    assert model.calls == [["a"], ["b", "c"], ["d"]]


async def test_a_cached_question_does_not_wait_for_a_busy_model() -> None:
    model = GatedModel()
    cached = CachedQueryEmbedder(model, size=8)
    batcher = QuestionBatcher(cached)
    model.gate.set()
    await batcher.embed("known")
    model.gate.clear()
    busy = asyncio.create_task(batcher.embed("new"))
    await until(lambda: len(model.calls) == 2)
    # The model is stuck on "new"; the cached question is answered anyway.
    vector = await asyncio.wait_for(batcher.embed("KNOWN "), 1)
    assert vector.tolist() == [5, 1]
    model.gate.set()
    await busy
    assert model.calls == [["known"], ["new"]]


async def test_a_model_failure_fails_its_batch_and_the_next_batch_runs() -> None:
    model = GatedModel(fail=True)
    batcher = QuestionBatcher(model)
    model.gate.set()
    results = await asyncio.gather(batcher.embed("a"), batcher.embed("b"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    model.fail = False
    assert (await batcher.embed("ok")).tolist() == [2, 1]


async def test_a_question_given_up_on_is_not_embedded() -> None:
    model = GatedModel()
    batcher = QuestionBatcher(model)
    first = asyncio.create_task(batcher.embed("a"))
    await until(lambda: len(model.calls) == 1)
    gone = asyncio.create_task(batcher.embed("gone"))
    kept = asyncio.create_task(batcher.embed("kept"))
    await asyncio.sleep(0.01)
    gone.cancel()
    model.gate.set()
    await asyncio.gather(first, kept)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert model.calls == [["a"], ["kept"]]


async def test_two_lanes_run_two_calls_at_once_and_share_the_waiting_questions() -> None:
    model = GatedModel()
    batcher = QuestionBatcher(model, lanes=2)
    first = [asyncio.create_task(batcher.embed(q)) for q in ("a", "b")]
    # Both run at once: each lane's model call is in flight before either returns.
    await until(lambda: len(model.calls) == 2)
    assert sorted(map(tuple, model.calls)) == [("a",), ("b",)]
    rest = [asyncio.create_task(batcher.embed(q)) for q in ("c", "d", "e", "f")]
    await asyncio.sleep(0.01)
    assert len(model.calls) == 2  # both lanes busy: the rest wait
    model.gate.set()
    vectors = await asyncio.gather(*first, *rest)
    assert [v.tolist()[0] for v in vectors] == [1, 1, 1, 1, 1, 1]
    later = model.calls[2:]
    assert sorted(q for call in later for q in call) == ["c", "d", "e", "f"]
    # Each lane took its share of the four waiting, not all of them.
    assert max(len(call) for call in later) == 2
    # A lane frees itself as it ends: the next question starts a call at once.
    model.gate.clear()
    again = asyncio.create_task(batcher.embed("gg"))
    await until(lambda: len(model.calls) == len(later) + 3)
    model.gate.set()
    assert (await again).tolist() == [2, 1]


def test_lanes_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="lanes"):
        QuestionBatcher(GatedModel(), lanes=0)
