"""Administration: a live backup of the index and the buckets that hold state (admin scope).

`helpline up`'s process, which holds the vector store, writes it into a new folder of
HELPLINE_BACKUP_DIR on its machine (`gateway/backups`); `helpline restore` reads it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from helpline.gateway.auth import GUARDED, requires
from helpline.gateway.backups import take_backup
from helpline.gateway.keys import Scope
from helpline.gateway.routes.deps import TasksDep
from helpline.gateway.schemas import Body, ErrorBody

router = APIRouter(tags=["admin"], dependencies=[requires(Scope.ADMIN)], responses={**GUARDED})


class BackupRequest(Body):
    with_tasks: bool = Field(default=False, description="Keep finished task records too.")


class BackupMade(BaseModel):
    path: str = Field(description="The folder written, on the machine helpline up runs on.")
    points: int
    buckets: dict[str, int] = Field(description="Entries kept per bucket.")
    bytes: int
    seconds: float
    left_out_pages: list[str] = Field(
        description="Pages indexed or changed while it was taken, left out with their points "
        "(the next crawl fetches them again)."
    )
    manifest: dict[str, Any] = Field(description="The backup's manifest.json.")


@router.post(
    "/admin/backup",
    response_model=BackupMade,
    responses={
        409: {
            "model": ErrorBody,
            "description": "HELPLINE_BACKUP_DIR unset, no process here takes live backups "
            "(only helpline up does), or one is being taken.",
        },
        504: {
            "model": ErrorBody,
            "description": "Not finished in time.",
        },
    },
)
async def backup(request: Request, tasks: TasksDep, body: BackupRequest | None = None) -> Any:
    """Back up the running system, consistently while crawls run: every point kept has its
    page record; a page indexed meanwhile is left out (listed) for the next crawl."""
    asked = body or BackupRequest()
    return await take_backup(tasks, request.app.state.backup_dir, with_tasks=asked.with_tasks)
