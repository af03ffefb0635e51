"""Maintenance jobs, by name; each returns its result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from helpline.common.errors import InputRejected
from helpline.common.messages import utcnow
from helpline.common.retrypolicy import DEFAULT_MAX_RUN_S
from helpline.common.worker import TaskContext
from helpline.maintenance.reconcile import reconcile as reconcile_parents
from helpline.maintenance.watchdog import GRACE_S, LIVE_WITHIN_S, watch

Job = Callable[[dict[str, Any], TaskContext], Awaitable[dict[str, Any]]]


MAX_PING_DELAY_MS = 60_000


async def ping(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """The no-op job: proves the service consumes; `delay_ms` makes it stand in for real work."""
    delay_ms = params.get("delay_ms", 0)
    if not isinstance(delay_ms, int) or not 0 <= delay_ms <= MAX_PING_DELAY_MS:
        raise InputRejected(
            f"delay_ms must be an integer from 0 to {MAX_PING_DELAY_MS}", field="delay_ms"
        )
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    return {"pong": True, "at": utcnow().isoformat()}


async def reconcile(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Have the tracker recount parents whose progress fell behind their ledger."""
    return await reconcile_parents(ctx.bus, time.time())


async def watchdog(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Settle tasks left running with no live worker (`watchdog`). `max_run_s` (by kind),
    `grace_s` and `live_within_s` come with the scheduled task, from the settings."""
    max_run_s = params.get("max_run_s", {})
    grace_s = params.get("grace_s", GRACE_S)
    live_within_s = params.get("live_within_s", LIVE_WITHIN_S)
    if not isinstance(max_run_s, dict) or not all(
        isinstance(v, int | float) for v in max_run_s.values()
    ):
        raise InputRejected("max_run_s must map kinds to seconds", field="max_run_s")
    for name, value in (("grace_s", grace_s), ("live_within_s", live_within_s)):
        if not isinstance(value, int | float) or value < 0:
            raise InputRejected(f"{name} must be a number of seconds", field=name)
    return await watch(
        ctx.bus,
        time.time(),
        max_run_s={**DEFAULT_MAX_RUN_S, **max_run_s},
        grace_s=float(grace_s),
        live_within_s=float(live_within_s),
    )


JOBS: dict[str, Job] = {"ping": ping, "reconcile": reconcile, "watchdog": watchdog}


def job_named(name: str) -> Job:
    """The job of this name, or a failed task saying which jobs exist."""
    try:
        return JOBS[name]
    except KeyError:
        raise InputRejected(
            f"unknown maintenance job {name!r}; known: {', '.join(sorted(JOBS))}", field="job"
        ) from None
