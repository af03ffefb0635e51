from __future__ import annotations

from helpline.common.subjects import Priority
from helpline.common.urgency import Urgency


def test_batch_work_waits_only_while_urgent_work_is_recent() -> None:
    urgency = Urgency(window_s=1.0, batch_starts_per_s=5.0)
    assert not urgency.yielding(now=100.0)
    assert urgency.batch_wait(last_batch_start=99.99, now=100.0) == 0.0

    for priority in (Priority.NORMAL, Priority.LOW, Priority.BULK):
        urgency.started(priority, now=100.0)
    assert not urgency.yielding(now=100.0)  # only critical and high work is urgent

    urgency.started(Priority.HIGH, now=100.0)
    assert urgency.yielding(now=100.5)
    # The reserved share: one batch start every 0.2 s while urgent work is recent.
    assert abs(urgency.batch_wait(last_batch_start=100.4, now=100.5) - 0.1) < 1e-9
    assert urgency.batch_wait(last_batch_start=100.2, now=100.5) == 0.0
    # Held until the earlier of the next reserved start and the end of the window.
    assert abs(urgency.batch_wait(last_batch_start=100.9, now=100.95) - 0.05) < 1e-9
    assert not urgency.yielding(now=101.0)
    assert urgency.batch_wait(last_batch_start=100.99, now=101.0) == 0.0

    urgency.started(Priority.CRITICAL, now=102.0)
    assert urgency.yielding(now=102.1)


def test_a_zero_window_never_yields() -> None:
    urgency = Urgency(window_s=0.0, batch_starts_per_s=5.0)
    urgency.started(Priority.CRITICAL, now=10.0)
    assert not urgency.yielding(now=10.0)
    assert urgency.batch_wait(last_batch_start=10.0, now=10.0) == 0.0


def test_the_time_spent_yielding_adds_up_overlapping_windows_once() -> None:
    urgency = Urgency(window_s=1.0, batch_starts_per_s=5.0)
    assert urgency.yielded_s(now=5.0) == 0.0
    urgency.started(Priority.CRITICAL, now=10.0)
    assert urgency.yielded_s(now=10.25) == 0.25  # only what has passed
    urgency.started(Priority.CRITICAL, now=10.5)  # overlaps: the window now ends at 11.5
    assert urgency.yielded_s(now=11.5) == 1.5
    assert urgency.yielded_s(now=20.0) == 1.5
    urgency.started(Priority.BULK, now=20.0)  # batch work yields to nothing
    urgency.started(Priority.HIGH, now=30.0)
    assert urgency.yielded_s(now=40.0) == 2.5
