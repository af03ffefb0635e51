"""Circuit breakers, one per dependency: closed -> open -> half-open -> closed.

A breaker opens after `failures` consecutive failures and stays open for `open_s`
seconds; work that needs the dependency meanwhile raises `Deferred` (the bus waits and
spends no attempt). After `open_s` one trial call is let through (half-open): success
closes the breaker, failure opens it again. The failure that opens the breaker, and a
failed trial, also defer their task: the dependency is the known culprit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from helpline.common.errors import Deferred


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5
    open_s: float = 30.0


class CircuitBreaker:
    """One dependency's breaker; safe to use from the event loop and worker threads."""

    def __init__(
        self, name: str, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic
    ):
        self.name = name
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current()

    def _current(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.policy.open_s
        ):
            self._state = BreakerState.HALF_OPEN
            self._trial_running = False
        return self._state

    def retry_after(self) -> float:
        """Seconds until the breaker lets a trial call through (0 when it does now)."""
        with self._lock:
            if self._current() is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self.policy.open_s - (self._clock() - self._opened_at))

    def before_call(self) -> None:
        """Raise `Deferred` unless a call may go to the dependency now."""
        with self._lock:
            state = self._current()
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return
            wait = (
                self.policy.open_s - (self._clock() - self._opened_at)
                if state is BreakerState.OPEN
                else 1.0
            )
        raise Deferred(
            f"{self.name} is unavailable (circuit open); waiting for it", retry_after=max(wait, 0.5)
        )

    def succeeded(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._trial_running = False

    def failed(self) -> None:
        with self._lock:
            state = self._current()
            self._failures += 1
            if state is BreakerState.HALF_OPEN or self._failures >= self.policy.failures:
                if state is not BreakerState.OPEN:
                    self.opened_count += 1
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()
                self._trial_running = False

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` through the breaker (sync): any exception is a failure of the dependency."""
        self.before_call()
        try:
            result = fn(*args)
        except Exception as exc:
            self.failed_and_defer(exc)
            raise
        self.succeeded()
        return result

    def failed_and_defer(self, exc: BaseException) -> None:
        """Record a failure; if the breaker is (now) open, blame the dependency, not the task."""
        self.failed()
        if self.state is not BreakerState.CLOSED:
            raise Deferred(
                f"{self.name} is unavailable (circuit open); waiting for it",
                retry_after=max(self.retry_after(), 0.5),
            ) from exc

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            state = self._current()
            return {
                "name": self.name,
                "state": str(state),
                "consecutive_failures": self._failures,
                "failure_threshold": self.policy.failures,
                "open_s": self.policy.open_s,
                "times_opened": self.opened_count,
                "retry_after_s": round(
                    max(0.0, self.policy.open_s - (self._clock() - self._opened_at)), 3
                )
                if state is BreakerState.OPEN
                else 0.0,
            }


class BreakerBoard:
    """A process's breakers by name (`vector-store`, `host:docs.example.com`, ...)."""

    def __init__(self) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, name: str, policy: BreakerPolicy) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = self._breakers[name] = CircuitBreaker(name, policy)
            return breaker

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            breakers = list(self._breakers.values())
        return [b.snapshot() for b in sorted(breakers, key=lambda b: b.name)]
