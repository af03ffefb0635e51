"""The shared answer cache and the index generations that keep it fresh.

Answers live in the `answers` KV bucket (TTL `HELPLINE_ANSWER_CACHE_TTL_S`) under a key
derived from the normalised question, the brand, top_k and the brand's index generation.
The embedder bumps a brand's generation (and the all-brands one) in the `generations`
bucket after every committed change, so a question asked after new content landed maps
to a new key: stale answers are never served, only left to expire.

A generation is the KV revision of the brand's entry: every `put` gets a new, larger
revision, so bumping needs no compare-and-swap. Readers follow the bucket with a watch
and keep the current generations in memory (no read per question).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js.errors import KeyNotFoundError, NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from helpline.common import metrics
from helpline.common.kvscan import kv_entries
from helpline.common.messages import Answer
from helpline.common.observability import span
from helpline.common.subjects import Bucket

if TYPE_CHECKING:
    from helpline.common.bus import Bus
    from helpline.common.kv import Buckets

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("helpline.answercache")

ALL_BRANDS = "_all"

_SPACE = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s?!.]+$")


def normalise(question: str) -> str:
    """The question as the cache sees it: case, spacing and trailing punctuation folded."""
    return _TRAILING.sub("", _SPACE.sub(" ", question.strip().lower()))


def generation_key(brand: str | None) -> str:
    """A brand's key in the generations bucket (brands may hold characters keys may not)."""
    if brand is None:
        return ALL_BRANDS
    return "b_" + hashlib.sha256(brand.encode()).hexdigest()[:24]


def answer_key(question: str, brand: str | None, top_k: int, generation: int) -> str:
    """The cache key of one question, asked of one brand's index at one generation."""
    raw = "\x1f".join((normalise(question), brand or "", str(top_k), str(generation)))
    return hashlib.sha256(raw.encode()).hexdigest()


async def bump_generation(bus: Bus, brand: str) -> None:
    """Declare that a brand's index changed: its cached answers (and all-brands ones) go stale."""
    kv = await bus.buckets.get(Bucket.GENERATIONS)
    await kv.put(generation_key(brand), b"")
    await kv.put(ALL_BRANDS, b"")


class Generations:
    """Every brand's current generation, followed in memory through a KV watch."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None

    async def start(self, bus: Bus) -> None:
        kv = await bus.buckets.get(Bucket.GENERATIONS)
        # Changes from now on; the generations stored so far are read apart, completely
        # (the watch's own "that was all" marker can come before them: kvscan.py).
        watcher = await kv.watchall()

        async def follow() -> None:
            async for entry in watcher:
                if entry is not None and entry.key:
                    self._note(entry.key, entry.revision or 0)

        async def load() -> None:
            delay = 0.5
            while True:
                try:
                    async for stored in kv_entries(kv):
                        self._note(stored.key, stored.revision)
                except Exception as exc:  # the bus is away: questions skip the cache meanwhile
                    log.warning("reading the index generations: %r", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                self._ready.set()
                return

        self._task = asyncio.create_task(follow())
        self._loading = asyncio.create_task(load())
        # Until they are read nothing is served from the cache.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5.0)

    def _note(self, key: str, revision: int) -> None:
        self._current[key] = max(self._current.get(key, 0), revision)

    async def stop(self) -> None:
        for task in (self._loading, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._loading = None

    def current(self, brand: str | None) -> int | None:
        """The brand's generation (0 before any change), or None while still loading."""
        if not self._ready.is_set():
            return None
        return self._current.get(generation_key(brand), 0)


@dataclass
class CacheStats:
    hits: int
    misses: int
    hit_rate: float
    entries: int
    bytes: int
    ttl_s: float


class AnswerCache:
    """Reads, stats and clearing of the answers bucket, for one process (its hit counters)."""

    def __init__(self, bus: Bus, generations: Generations) -> None:
        self.bus = bus
        self.generations = generations
        self.hits = 0
        self.misses = 0

    def key(self, question: str, brand: str | None, top_k: int) -> str | None:
        """The key this question has now, or None when generations are not known yet."""
        generation = self.generations.current(brand)
        if generation is None:
            return None
        return answer_key(question, brand, top_k, generation)

    async def get(self, key: str) -> Answer | None:
        """The cached answer under `key` (counted as a hit), or None (a miss)."""
        with span(_tracer, "answer cache get", kind=SpanKind.CLIENT):
            answer = await self._get(key)
            trace.get_current_span().set_attribute("helpline.cache.hit", answer is not None)
            return answer

    async def _get(self, key: str) -> Answer | None:
        kv = await self.bus.buckets.get(Bucket.ANSWERS)
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            self._missed()
            return None
        try:
            answer = Answer.model_validate_json(entry.value)
        except ValueError:
            self._missed()
            return None
        self.hits += 1
        metrics.CACHE_LOOKUPS.labels("hit").inc()
        return answer

    def _missed(self) -> None:
        self.misses += 1
        metrics.CACHE_LOOKUPS.labels("miss").inc()

    async def stats(self) -> CacheStats:
        info = await self.bus.js.stream_info(_stream(self.bus))
        asked = self.hits + self.misses
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            hit_rate=round(self.hits / asked, 4) if asked else 0.0,
            entries=info.state.messages or 0,
            bytes=info.state.bytes or 0,
            ttl_s=info.config.max_age or 0.0,
        )

    async def clear(self) -> int:
        """Drop every cached answer (for every replica); returns how many were dropped."""
        try:
            before = await self.bus.js.stream_info(_stream(self.bus))
            await self.bus.js.purge_stream(_stream(self.bus))
        except NotFoundError:
            return 0
        return before.state.messages or 0


async def store_answer(buckets: Buckets, key: str, answer: Answer) -> None:
    """Cache an answer under the key its question was given."""
    with span(_tracer, "answer cache put", kind=SpanKind.CLIENT):
        await (await buckets.get(Bucket.ANSWERS)).put(
            key, answer.model_dump_json(exclude={"duration_ms"}).encode()
        )


def _stream(bus: Bus) -> str:
    return f"KV_{bus.layout.bucket(Bucket.ANSWERS)}"
