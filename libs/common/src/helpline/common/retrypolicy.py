"""How a task is retried and how long an attempt may run: `RetryPolicy`, the settings'
backoff, attempts and per-kind run-time limits, which `worker.run_task` applies."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from helpline.common.subjects import Kind

#: Longest one delivery of a task may run, by kind (`HELPLINE_MAX_RUN_S` overrides): far
#: beyond what the work takes when it is well (a question answers in well under a second,
#: a page renders in seconds), short enough that a hung handler frees its slot.
DEFAULT_MAX_RUN_S: Final[dict[str, float]] = {
    Kind.QUERY: 60.0,
    Kind.SCRAPE: 300.0,
    Kind.CRAWL: 300.0,
    Kind.EMBED: 600.0,
    Kind.MAINTENANCE: 1800.0,
    Kind.WEBHOOK: 60.0,
}
#: A kind without its own limit.
FALLBACK_MAX_RUN_S: Final = 300.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with equal jitter (half fixed, half random), from the attempt;
    and how long one delivery of each kind may run."""

    base_s: float = 1.0
    cap_s: float = 30.0
    max_attempts: int = 4
    max_run_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_RUN_S))

    def max_run(self, kind: Kind) -> float:
        return self.max_run_s.get(kind, FALLBACK_MAX_RUN_S)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1`."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(attempt - 1, 0))
        delay: float = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap_s))
        return delay
