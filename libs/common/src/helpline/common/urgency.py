"""Batch work yields to urgent work started in the same process.

The task pools of one process share its CPU and its interpreter lock, and a pool's
priorities only order its own slots: under `helpline up` a re-index's scraping and indexing
(low and bulk) run beside the questions rag answers (critical). While urgent work (critical
or high) started in this process within the last `window_s`, each pool starts at most
`batch_starts_per_s` batch tasks a second, whatever slots it has free: the reserved share
that keeps the backlog draining. Once the questions stop for `window_s`, batch work runs
at full speed again. Processes that host no urgent work (a scraper replica of its own)
never yield.
"""

from __future__ import annotations

import time

from helpline.common.subjects import Priority

URGENT_PRIORITIES = frozenset({Priority.CRITICAL, Priority.HIGH})
BATCH_PRIORITIES = frozenset({Priority.LOW, Priority.BULK})


class Urgency:
    """When this process last started urgent work, and how long batch work must wait."""

    def __init__(self, window_s: float, batch_starts_per_s: float) -> None:
        self.window_s = window_s
        self.batch_interval_s = 1.0 / batch_starts_per_s if batch_starts_per_s > 0 else 0.0
        self.urgent_at = float("-inf")
        # Seconds of yielding counted so far, up to the end of the current window.
        self._counted = 0.0
        self._counted_until = float("-inf")

    def started(self, priority: Priority, now: float | None = None) -> None:
        """A task of `priority` started in this process."""
        if priority not in URGENT_PRIORITIES:
            return
        now = time.monotonic() if now is None else now
        self.urgent_at = now
        if self.window_s > 0:
            until = now + self.window_s
            self._counted += until - max(self._counted_until, now)
            self._counted_until = until

    def yielded_s(self, now: float | None = None) -> float:
        """How long, in all, batch work here has been held back for urgent work."""
        now = time.monotonic() if now is None else now
        return self._counted - max(0.0, self._counted_until - now)

    def yielding(self, now: float | None = None) -> bool:
        """Whether batch work is being held back now."""
        now = time.monotonic() if now is None else now
        return self.window_s > 0 and now - self.urgent_at < self.window_s

    def batch_wait(self, last_batch_start: float, now: float | None = None) -> float:
        """Seconds before a pool whose last batch task started at `last_batch_start` may start
        another (0: now); when it is held, the earlier of its next reserved start and the
        end of the urgent window."""
        now = time.monotonic() if now is None else now
        if not self.yielding(now):
            return 0.0
        next_start = last_batch_start + self.batch_interval_s - now
        if next_start <= 0:
            return 0.0
        return min(next_start, self.urgent_at + self.window_s - now)
