"""Circuit breaker states on a fake clock."""

from __future__ import annotations

import pytest

from helpline.common.breaker import BreakerBoard, BreakerPolicy, BreakerState, CircuitBreaker
from helpline.common.errors import Deferred


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def boom() -> None:
    raise ConnectionError("down")


def test_opens_after_threshold_defers_then_half_opens_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker("store", BreakerPolicy(failures=3, open_s=30), clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    assert breaker.state is BreakerState.CLOSED
    # The failure that opens it blames the dependency: Deferred, not the task's error.
    with pytest.raises(Deferred) as opened:
        breaker.call(boom)
    assert breaker.state is BreakerState.OPEN
    assert opened.value.retry_after == pytest.approx(30)
    clock.now += 10
    with pytest.raises(Deferred) as waiting:
        breaker.call(lambda: "never called")
    assert waiting.value.retry_after == pytest.approx(20)
    clock.now += 20
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.call(lambda: "trial") == "trial"
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["times_opened"] == 1


def test_failed_trial_reopens_and_only_one_trial_at_a_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker("host:x", BreakerPolicy(failures=1, open_s=5), clock)
    with pytest.raises(Deferred):
        breaker.call(boom)
    clock.now += 5
    breaker.before_call()  # the trial
    with pytest.raises(Deferred):
        breaker.before_call()  # a second caller waits for the trial's outcome
    with pytest.raises(Deferred):
        breaker.failed_and_defer(ConnectionError("still down"))
    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot()["times_opened"] == 2


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker("s", BreakerPolicy(failures=2, open_s=1), Clock())
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    breaker.call(lambda: None)
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    assert breaker.state is BreakerState.CLOSED


def test_board_keeps_one_breaker_per_name() -> None:
    board = BreakerBoard()
    first = board.get("vector-store", BreakerPolicy())
    assert board.get("vector-store", BreakerPolicy(failures=9)) is first
    board.get("host:a", BreakerPolicy())
    assert [b["name"] for b in board.snapshot()] == ["host:a", "vector-store"]
