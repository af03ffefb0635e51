"""Prometheus metrics: every family Helpline exports, defined once, in one registry.

Each process (a service, or `helpline up` with several) exports its own registry on its
HTTP port at `/metrics`: the gateway through its API, a worker through its probes.
Labels come from small fixed sets only (route template, kind, priority, outcome,
dependency): never a URL, a question, a brand or a key. Names follow Prometheus'
conventions: the `helpline_` prefix, base units, `_total` for counters.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from helpline.common.breaker import BreakerBoard

REGISTRY = CollectorRegistry(auto_describe=True)
# Whether this process counts (HELPLINE_METRICS); set once at start by `configure`.
_enabled = True


def configure(enabled: bool) -> None:
    """Count or not, for the whole process (`HELPLINE_METRICS`)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether this process counts."""
    return _enabled


CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Request and task durations: 1 ms to 2 min.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    120.0,
)

HTTP_REQUESTS = Counter(
    "helpline_http_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "helpline_http_request_duration_seconds",
    "Time to answer an HTTP request (to the end of its body), by route template",
    ["route", "method"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
TASKS = Counter(
    "helpline_tasks",
    "Task deliveries settled, by kind, priority and outcome (succeeded, failed, retried, "
    "deferred, expired, cancelled, dead_lettered, skipped, reported_later)",
    ["kind", "priority", "outcome"],
    registry=REGISTRY,
)
TASK_RUN = Histogram(
    "helpline_task_run_seconds",
    "Time a handler ran, by kind and priority",
    ["kind", "priority"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
TASK_WAIT = Histogram(
    "helpline_task_queue_wait_seconds",
    "Time from a task's publication (this delivery's) to its start, by kind and priority",
    ["kind", "priority"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
POISON = Counter(
    "helpline_poison_messages",
    "Messages that were not valid tasks, dead-lettered at once, by kind",
    ["kind"],
    registry=REGISTRY,
)
WATCHDOG_SETTLED = Counter(
    "helpline_watchdog_settled",
    "Tasks found running with no live worker and settled by the watchdog, by kind and "
    "outcome (requeued: its message will be delivered again; failed: none is left)",
    ["kind", "outcome"],
    registry=REGISTRY,
)
QUEUE_PENDING = Gauge(
    "helpline_queue_pending",
    "Tasks waiting on the bus (not yet delivered), by kind and priority",
    ["kind", "priority"],
    registry=REGISTRY,
)
QUEUE_IN_FLIGHT = Gauge(
    "helpline_queue_in_flight",
    "Tasks delivered and not yet settled, by kind and priority",
    ["kind", "priority"],
    registry=REGISTRY,
)
QUEUE_OLDEST_AGE = Gauge(
    "helpline_queue_oldest_age_seconds",
    "Age of the oldest waiting task, by kind and priority (0 when none waits)",
    ["kind", "priority"],
    registry=REGISTRY,
)
DEAD_LETTERS = Gauge(
    "helpline_dead_letters",
    "Dead letters kept in the dead-letter stream",
    registry=REGISTRY,
)
CACHE_LOOKUPS = Counter(
    "helpline_answer_cache_lookups",
    "Answer cache reads at the gateway, by result (hit, miss)",
    ["result"],
    registry=REGISTRY,
)
CACHE_ENTRIES = Gauge(
    "helpline_answer_cache_entries",
    "Answers in the shared answer cache",
    registry=REGISTRY,
)

#: A breaker's state as a number, so that one time series per dependency follows it.
BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class BreakerCollector(Collector):
    """This process's circuit breakers, read when scraped: one series per dependency; the
    per-site breakers (`host:<name>`) are counted, not named (their names are unbounded)."""

    def __init__(self, boards: Callable[[], list[BreakerBoard]]) -> None:
        self._boards = boards

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "helpline_breaker_state",
            "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open",
            labels=["dependency"],
        )
        sites = GaugeMetricFamily(
            "helpline_site_breakers",
            "Per-site breakers of the scraper, by state",
            labels=["state"],
        )
        site_counts = dict.fromkeys(BREAKER_STATES, 0)
        # One series per dependency: where several buses in a process hold one, the worst.
        worst: dict[str, float] = {}
        for board in self._boards():
            for breaker in board.snapshot():
                name, current = str(breaker["name"]), str(breaker["state"])
                if name.startswith("host:"):
                    site_counts[current] = site_counts.get(current, 0) + 1
                else:
                    level = BREAKER_STATES.get(current, 0.0)
                    worst[name] = max(worst.get(name, 0.0), level)
        for name, level in sorted(worst.items()):
            state.add_metric([name], level)
        for current, count in site_counts.items():
            sites.add_metric([current], float(count))
        yield state
        yield sites


# Weak: a board is exported while its bus lives (a process usually has one).
_BOARDS: weakref.WeakSet[BreakerBoard] = weakref.WeakSet()
REGISTRY.register(BreakerCollector(lambda: list(_BOARDS)))


def watch_breakers(board: BreakerBoard) -> None:
    """Export this board's breakers while it exists."""
    _BOARDS.add(board)


def exposition() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)
