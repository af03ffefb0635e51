"""Liveness and readiness, for the orchestrator (outside /api/v1, no Tasks dependency)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from helpline.gateway.schemas import ErrorBody
from helpline.gateway.tasks import Tasks

router = APIRouter(tags=["probes"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorBody}})
async def readyz(request: Request, response: Response) -> dict[str, str]:
    """The bus is connected and its streams exist."""
    # Not through `TasksDep`: a gateway still starting is "not ready", not an error.
    tasks: Tasks | None = getattr(request.app.state, "tasks", None)
    if tasks is None or not await tasks.bus.streams_present():
        response.status_code = 503
        return {"status": "not ready"}
    return {"status": "ready"}
