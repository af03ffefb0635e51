"""Maintenance jobs, by name; each returns its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from helpline.common.errors import InputRejected
from helpline.common.messages import utcnow

Job = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


MAX_PING_DELAY_MS = 60_000


async def ping(params: dict[str, Any]) -> dict[str, Any]:
    """The no-op job: proves the service consumes; `delay_ms` makes it stand in for real work."""
    delay_ms = params.get("delay_ms", 0)
    if not isinstance(delay_ms, int) or not 0 <= delay_ms <= MAX_PING_DELAY_MS:
        raise InputRejected(
            f"delay_ms must be an integer from 0 to {MAX_PING_DELAY_MS}", field="delay_ms"
        )
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
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
