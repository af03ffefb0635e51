"""What the system is doing: queues per kind and priority, worker pools per replica."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nats.js.errors import NotFoundError

from helpline.common import subjects
from helpline.common.bus import Bus
from helpline.common.messages import utcnow
from helpline.common.subjects import Kind


async def queues(bus: Bus) -> list[dict[str, Any]]:
    """Per kind and priority: pending, in flight, redelivered, age of the oldest waiting task."""
    lay = bus.layout
    now = utcnow()
    out: list[dict[str, Any]] = []
    for kind in Kind:
        stream = lay.task_stream(kind)
        for priority in subjects.PRIORITIES_HIGH_FIRST:
            config = lay.consumer_config(kind, priority)
            info = await bus.js.consumer_info(stream, config.durable_name or "")
            oldest_age_s: float | None = None
            if (info.num_pending or 0) + (info.num_ack_pending or 0) > 0:
                try:
                    first = await bus.js.get_msg(
                        stream, seq=1, subject=config.filter_subject, next=True
                    )
                except NotFoundError:
                    first = None
                if first is not None and isinstance(first.time, datetime):
                    oldest_age_s = round((now - first.time).total_seconds(), 3)
            out.append(
                {
                    "kind": str(kind),
                    "priority": str(priority),
                    "pending": info.num_pending or 0,
                    "in_flight": info.num_ack_pending or 0,
                    "redelivered": info.num_redelivered or 0,
                    "oldest_age_s": oldest_age_s,
                }
            )
    return out


def workers(replicas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per service: replicas seen through heartbeats, configured concurrency, busy, last seen,
    and whether its batch work is holding back for questions in the same process."""
    services: dict[str, dict[str, Any]] = {}
    for replica in replicas:
        for pool in replica.get("pools", []):
            service = _service_of(pool["kind"], replica.get("services", []))
            entry = services.setdefault(service, _service_entry(service, [], None))
            if replica["replica"] not in entry["replicas"]:
                entry["replicas"].append(replica["replica"])
                entry["batch_yielding"] |= bool(replica.get("batch_yielding", False))
                entry["batch_yielded_s"] += float(replica.get("batch_yielded_s", 0.0))
            entry["concurrency"] += pool["concurrency"]
            entry["busy"] += pool["busy"]
            entry["last_seen"] = max(filter(None, [entry["last_seen"], replica["at"]]))
        for name in replica.get("services", []):
            services.setdefault(name, _service_entry(name, [replica["replica"]], replica["at"]))
    for entry in services.values():
        entry["replica_count"] = len(entry["replicas"])
    return sorted(services.values(), key=lambda e: e["service"])


def _service_entry(service: str, replicas: list[str], last_seen: str | None) -> dict[str, Any]:
    return {
        "service": service,
        "replicas": replicas,
        "concurrency": 0,
        "busy": 0,
        "last_seen": last_seen,
        "batch_yielding": False,
        "batch_yielded_s": 0.0,
    }


_KIND_SERVICE = {
    "scrape": "scraper",
    "crawl": "scraper",
    "embed": "embedder",
    "query": "rag",
    "maintenance": "maintenance",
}


def _service_of(kind: str, services: list[str]) -> str:
    service = _KIND_SERVICE.get(kind, kind)
    return service if not services or service in services else services[0]
