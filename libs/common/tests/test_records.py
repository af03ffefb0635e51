"""Task records only move forward; terminal is final; duplicates change nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpline.common.messages import EventType, TaskError, TaskEvent
from helpline.common.records import Status, TaskRecord, apply_event
from helpline.common.subjects import Kind


def event(type_: EventType, attempt: int = 1, **fields: object) -> TaskEvent:
    return TaskEvent(task_id="t1", kind=Kind.SCRAPE, type=type_, attempt=attempt, **fields)  # type: ignore[arg-type]


def fold(*events: TaskEvent) -> TaskRecord:
    record = TaskRecord(task_id="t1", kind=Kind.SCRAPE)
    for e in events:
        record = apply_event(record, e) or record
    return record


def test_happy_path_sets_times_and_result() -> None:
    record = fold(
        event(EventType.STARTED), event(EventType.SUCCEEDED, result={"chunks_indexed": 3})
    )
    assert record.status is Status.SUCCEEDED
    assert record.attempts == 1
    assert record.started_at is not None
    assert record.finished_at is not None
    assert record.result == {"chunks_indexed": 3}


def test_running_after_succeeded_changes_nothing() -> None:
    done = fold(event(EventType.STARTED), event(EventType.SUCCEEDED, result={}))
    assert apply_event(done, event(EventType.STARTED, attempt=2)) is None
    assert (
        apply_event(done, event(EventType.FAILED, error=TaskError(type="X", message="late")))
        is None
    )


def test_duplicate_event_changes_nothing() -> None:
    first = event(EventType.STARTED)
    started = fold(first)
    assert apply_event(started, first) is None


def test_retry_cycle_moves_forward_by_attempt() -> None:
    err = TaskError(type="Retryable", message="timed out")
    record = fold(event(EventType.STARTED), event(EventType.RETRYING, error=err))
    assert record.status is Status.RETRYING
    assert record.error == err
    # A late `started` of the same attempt (it happened before the retry) changes nothing...
    assert record.updated_at is not None
    late = event(EventType.STARTED, attempt=1, at=record.updated_at - timedelta(milliseconds=5))
    assert apply_event(record, late) is None
    # ...the next attempt does.
    record = apply_event(record, event(EventType.STARTED, attempt=2)) or record
    assert record.status is Status.RUNNING
    assert record.attempts == 2


def test_failed_keeps_the_reason() -> None:
    err = TaskError(type="Permanent", message="HTTP 404 Not Found from http://x/")
    record = fold(event(EventType.STARTED), event(EventType.FAILED, error=err))
    assert record.status is Status.FAILED
    assert record.error == err


def test_terminal_event_without_start_still_finishes() -> None:
    record = fold(
        event(EventType.EXPIRED, error=TaskError(type="DeadlineExpired", message="deadline passed"))
    )
    assert record.status is Status.EXPIRED
    assert record.finished_at is not None


def test_deferred_retry_then_start_of_the_same_attempt_moves_forward() -> None:
    err = TaskError(type="Deferred", message="vector store is unavailable (circuit open)")
    record = fold(event(EventType.STARTED), event(EventType.RETRYING, error=err))
    # A delivery that only waited on a breaker spends no attempt: the next start is attempt 1 too.
    record = apply_event(record, event(EventType.STARTED, attempt=1)) or record
    assert record.status is Status.RUNNING
    assert record.attempts == 1


def test_bookkeeping_survives_storage_but_not_the_view() -> None:
    record = TaskRecord(task_id="t1", kind=Kind.CRAWL, updated_at=datetime.now(UTC))
    assert TaskRecord.from_bytes(record.to_bytes()).updated_at == record.updated_at
    assert "updated_at" not in record.view().model_dump()


def test_late_start_of_a_finished_task_fills_its_start_time_only() -> None:
    finished = fold(event(EventType.SUCCEEDED, result={}))
    assert finished.started_at is None
    start = event(EventType.STARTED, at=finished.updated_at - timedelta(milliseconds=3))
    record = apply_event(finished, start)
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert record.started_at == start.at
    assert record.finished_at == finished.finished_at
    assert apply_event(record, start) is None


def test_an_outcome_alone_carries_the_start_time() -> None:
    # A query reports only its outcome; its event says when the attempt started.
    began = TaskEvent(task_id="t1", kind=Kind.QUERY, type=EventType.STARTED).at
    record = fold(event(EventType.SUCCEEDED, result={}, started_at=began))
    assert record.status is Status.SUCCEEDED
    assert record.started_at == began
    assert record.finished_at is not None
    assert record.finished_at >= began
