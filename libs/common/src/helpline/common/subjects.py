"""Subject, stream, consumer and bucket names: the bus layout, written down once."""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    SCRAPE = "scrape"
    CRAWL = "crawl"
    EMBED = "embed"
    QUERY = "query"
    MAINTENANCE = "maintenance"


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"
    BULK = "bulk"

    @property
    def weight(self) -> int:
        """The seeds' numeric level: 1 (critical) .. 10 (bulk); lower runs first."""
        return _WEIGHTS[self]


_WEIGHTS = {
    Priority.CRITICAL: 1,
    Priority.HIGH: 2,
    Priority.NORMAL: 5,
    Priority.LOW: 8,
    Priority.BULK: 10,
}

PRIORITIES_HIGH_FIRST: tuple[Priority, ...] = tuple(sorted(Priority, key=lambda p: p.weight))

PREFIX = "helpline"


def task(kind: Kind, priority: Priority, prefix: str = PREFIX) -> str:
    """The subject a task of this kind and priority is published on."""
    return f"{prefix}.tasks.{kind}.{priority}"


def tasks_wildcard(kind: Kind, prefix: str = PREFIX) -> str:
    """Every priority of one kind (the stream's subjects)."""
    return f"{prefix}.tasks.{kind}.*"


def event(kind: Kind, prefix: str = PREFIX) -> str:
    """The subject workers report a task's progress on."""
    return f"{prefix}.events.{kind}"


def events_wildcard(prefix: str = PREFIX) -> str:
    """All events (the events stream, the tracker's filter)."""
    return f"{prefix}.events.>"


def dlq(kind: Kind, task_id: str, prefix: str = PREFIX) -> str:
    """Where a task's dead letter is kept (one subject per task, so it can be found by id)."""
    return f"{prefix}.dlq.{kind}.{task_id}"


def dlq_wildcard(prefix: str = PREFIX) -> str:
    return f"{prefix}.dlq.>"


def stream(kind: Kind, prefix: str = PREFIX) -> str:
    """The work-queue stream that holds one kind's tasks."""
    return f"{prefix.upper().replace('.', '_')}_TASKS_{kind.upper()}"


def events_stream(prefix: str = PREFIX) -> str:
    return f"{prefix.upper().replace('.', '_')}_EVENTS"


def dlq_stream(prefix: str = PREFIX) -> str:
    return f"{prefix.upper().replace('.', '_')}_DLQ"


def consumer(kind: Kind, priority: Priority) -> str:
    """The durable pull consumer shared by every replica that works this kind."""
    return f"{kind}-{priority}"


TRACKER_CONSUMER = "gateway-tracker"


def bucket(name: str, prefix: str = PREFIX) -> str:
    """A KV bucket's name (`tasks`, `crawls`)."""
    return f"{prefix.replace('.', '_')}_{name}"
