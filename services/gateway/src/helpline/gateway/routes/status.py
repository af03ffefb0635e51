"""What the system is doing: queues, workers, breakers, and all of it in one view."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from helpline.gateway import views
from helpline.gateway.auth import GUARDED, requires
from helpline.gateway.keys import Scope
from helpline.gateway.routes.deps import TasksDep
from helpline.gateway.schemas import QueueView, ReplicaBreakers, SystemStatus, WorkerView

router = APIRouter(tags=["status"], dependencies=[requires(Scope.ADMIN)], responses={**GUARDED})


@router.get("/queues", response_model=list[QueueView])
async def queue_view(tasks: TasksDep) -> list[dict[str, Any]]:
    """Per kind and priority: pending, in flight, redelivered, oldest waiting task's age."""
    return await views.queues(tasks.bus)


@router.get("/workers", response_model=list[WorkerView])
async def worker_view(tasks: TasksDep) -> list[dict[str, Any]]:
    """Per service: replicas seen through heartbeats, configured concurrency, busy, last seen."""
    return views.workers(await tasks.replicas())


@router.get("/system/status", response_model=SystemStatus)
async def system_status(tasks: TasksDep) -> dict[str, Any]:
    """Health, queues, workers, open breakers and the bus, in one view."""
    replicas = await tasks.replicas()
    ready = await tasks.bus.streams_present()
    open_breakers = [
        {"replica": r["replica"], **b}
        for r in replicas
        for b in r.get("breakers", [])
        if b["state"] != "closed"
    ]
    queue_rows = await views.queues(tasks.bus) if ready else []
    return {
        "status": "ok" if ready and not open_breakers else ("degraded" if ready else "down"),
        "bus": {**tasks.bus.connection(), "streams_present": ready},
        "queues": queue_rows,
        "workers": views.workers(replicas),
        "open_breakers": open_breakers,
    }


@router.get("/breakers", response_model=list[ReplicaBreakers])
async def breakers(tasks: TasksDep) -> list[ReplicaBreakers]:
    """Every circuit breaker's state, per replica (from the replicas' heartbeats)."""
    return [ReplicaBreakers.model_validate(r) for r in await tasks.replicas()]
