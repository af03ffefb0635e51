"""Live backups asked through the API: the gateway holds no vector store, so it asks the
process that does (under `helpline up`, `cli/backupserve`) on `subjects.admin_backup` and
waits for its answer: the folder written in HELPLINE_BACKUP_DIR and the manifest."""

from __future__ import annotations

import json
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from helpline.common import subjects
from helpline.gateway.errors import Conflict, GatewayError, QueryTimeout
from helpline.gateway.tasks import Tasks

#: The longest a backup is waited for (the PostgreSQL manual's index takes seconds).
BACKUP_WAIT_S = 600.0


class BackupRefused(Conflict):
    """No backup here: none configured, none taken in this deployment, or one running."""


class BackupTimeout(QueryTimeout):
    """Answered as a question past its deadline is (504)."""

    def __init__(self, wait_s: float) -> None:
        GatewayError.__init__(
            self, f"the backup did not finish within {wait_s:g} s; it may still be written"
        )


async def take_backup(
    tasks: Tasks, backup_dir: str, *, with_tasks: bool, wait_s: float = BACKUP_WAIT_S
) -> dict[str, Any]:
    """Ask the store's process for a live backup into a new folder of `backup_dir`."""
    if not backup_dir:
        raise BackupRefused(
            "no server-side backup folder: set HELPLINE_BACKUP_DIR (or run `helpline backup "
            "DIR` on the machine helpline up runs on)"
        )
    subject = subjects.admin_backup(tasks.bus.layout.prefix)
    body = json.dumps({"folder": None, "with_tasks": with_tasks}).encode()
    try:
        reply = await tasks.bus.nc.request(subject, body, timeout=wait_s)
    except NoRespondersError:
        raise BackupRefused(
            "no process here takes live backups (only helpline up does): back up a deployment "
            "with `helpline backup DIR` and HELPLINE_NATS_URL, HELPLINE_QDRANT_URL"
        ) from None
    except NatsTimeout:
        raise BackupTimeout(wait_s) from None
    answer: dict[str, Any] = json.loads(reply.data)
    if "error" in answer:
        if answer.get("refused"):
            raise BackupRefused(answer["error"])
        raise RuntimeError(answer["error"])
    return answer
