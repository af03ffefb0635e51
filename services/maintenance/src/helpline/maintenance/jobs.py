"""Maintenance jobs, by name; each returns its result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from helpline.common.errors import InputRejected
from helpline.common.messages import utcnow

Job = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def ping(params: dict[str, Any]) -> dict[str, Any]:
    """The no-op job: proves the service consumes (and measures the bus round trip)."""
    return {"pong": True, "at": utcnow().isoformat()}


JOBS: dict[str, Job] = {"ping": ping}


def job_named(name: str) -> Job:
    """The job of this name, or a failed task saying which jobs exist."""
    try:
        return JOBS[name]
    except KeyError:
        raise InputRejected(
            f"unknown maintenance job {name!r}; known: {', '.join(sorted(JOBS))}", field="job"
        ) from None
