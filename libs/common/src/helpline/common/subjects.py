"""Subject, stream, consumer and bucket names: the bus layout, written down once."""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    SCRAPE = "scrape"
    CRAWL = "crawl"
    EMBED = "embed"
    QUERY = "query"
    MAINTENANCE = "maintenance"
    WEBHOOK = "webhook"  # one signed delivery to a webhook (`webhooks`), worked by maintenance


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


def requests(prefix: str = PREFIX) -> str:
    """Where each gateway replica logs the requests it answered (the request log)."""
    return f"{prefix}.requests"


def requests_stream(prefix: str = PREFIX) -> str:
    """The bounded stream of finished requests every gateway replica's views read."""
    return f"{prefix.upper().replace('.', '_')}_REQUESTS"


def traces(trace_id: str, prefix: str = PREFIX) -> str:
    """Where finished spans of one trace are kept (one subject per trace, read by id)."""
    return f"{prefix}.traces.{trace_id}"


def traces_wildcard(prefix: str = PREFIX) -> str:
    return f"{prefix}.traces.*"


def traces_stream(prefix: str = PREFIX) -> str:
    """The bounded stream of recent traces every process adds its spans to (`spanstore`)."""
    return f"{prefix.upper().replace('.', '_')}_TRACES"


def admin_backup(prefix: str = PREFIX) -> str:
    """Core NATS requests for a live backup, answered by the process that holds the vector
    store under `helpline up` (`helpline backup`, `POST /api/v1/admin/backup`)."""
    return f"{prefix}.admin.backup"


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


class Bucket(StrEnum):
    """Every KV bucket the services share; `bucket()` gives a deployment's full name."""

    TASKS = "tasks"  # task records (`records`, `taskstore`)
    CRAWLS = "crawls"  # crawl claims, batch gates, parents' ledgers (`crawlstate`)
    DEFERRALS = "deferrals"  # deliveries that waited on an open breaker, per task
    CANCELS = "cancels"  # cancelled task ids
    REPLICAS = "replicas"  # replica heartbeats
    PAGES = "pages"  # per indexed page: validators, chunk count, links (`pagestate`)
    TEXTS = "texts"  # per indexed page: its extracted text as Markdown (`pagestate`)
    HOSTS = "hosts"  # per scraped host: when the next request may start
    ANSWERS = "answers"  # the answer cache (`answercache`)
    GENERATIONS = "generations"  # per brand: the index generation answers are keyed by
    KEYS = "keys"  # API keys, hashed (the gateway's `auth`)
    RATES = "rates"  # per API key: its rate limit's state (the gateway's `ratelimit`)
    SOURCES = "sources"  # sites crawled on a schedule (`sources`)
    LEASES = "leases"  # who holds a replicated job, until when (`leases`)
    WEBHOOKS = "webhooks"  # webhook subscriptions with their signing secrets (`webhooks`)
    DELIVERIES = "deliveries"  # per webhook: its recent deliveries (`webhooks`)


def bucket(name: str, prefix: str = PREFIX) -> str:
    """A KV bucket's full name in a deployment (`helpline_tasks`)."""
    return f"{prefix.replace('.', '_')}_{name}"
