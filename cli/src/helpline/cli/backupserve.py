"""Live backups under `helpline up`: its process holds Qdrant Edge, so it takes them.

`BackupResponder` answers core NATS requests on `subjects.admin_backup`: `{"folder": an
absolute path or null, "with_tasks": bool}`. A folder is written as named (`helpline backup
DIR`, on this machine: whoever may talk on the bus is trusted with the data anyway); with
none (`POST /api/v1/admin/backup`) a new `backup-<UTC time>` folder in HELPLINE_BACKUP_DIR,
refused when that is unset. One backup at a time; the answer is the summary and the manifest,
or `{"error", "refused": true}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpline.common import subjects

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from helpline.common.bus import Bus
    from helpline.common.knowledge import Knowledge
    from helpline.common.taskpool import TaskConsumer

log = logging.getLogger(__name__)


def summary_reply(summary: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": str(summary.path),
        "points": summary.points,
        "buckets": summary.buckets,
        "bytes": summary.bytes,
        "seconds": round(summary.seconds, 3),
        "left_out_pages": summary.dropped_pages,
        "manifest": manifest,
    }


class BackupResponder:
    """A `Component` of up's process: takes live backups of the store it shares."""

    name = "backup"
    #: Not one of Helpline's services: the workers view leaves it out.
    service = False

    def __init__(
        self, knowledge: Knowledge, *, backup_dir: str, collection: str, store_kind: str
    ) -> None:
        self.knowledge = knowledge
        self.backup_dir = backup_dir
        self.collection = collection
        self.store_kind = store_kind
        self._bus: Bus | None = None
        self._sub: Subscription | None = None
        self._running: asyncio.Task[None] | None = None

    def consumers(self, bus: Bus) -> list[TaskConsumer]:
        return []

    async def start(self, bus: Bus) -> None:
        self._bus = bus
        self._sub = await bus.nc.subscribe(subjects.admin_backup(bus.layout.prefix), cb=self._ask)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(BaseException):
                await self._running

    async def _ask(self, msg: Msg) -> None:
        if self._running is not None and not self._running.done():
            await _answer(msg, {"error": "a backup is already being taken", "refused": True})
            return
        self._running = asyncio.create_task(self._take(msg))

    async def _take(self, msg: Msg) -> None:
        from helpline.cli.backup import MANIFEST, Refused, backup_live

        try:
            asked = json.loads(msg.data or b"{}")
            target = self._target(asked.get("folder"))
            assert self._bus is not None
            summary = await backup_live(
                target,
                self.knowledge.store,
                self._bus.nc,
                prefix=self._bus.layout.prefix,
                collection=self.collection,
                dim=self.knowledge.model.dim,
                store_kind=self.store_kind,
                with_tasks=bool(asked.get("with_tasks")),
            )
            manifest = json.loads(await asyncio.to_thread((target / MANIFEST).read_text))
            log.info(summary.line("live backup to"))
            await _answer(msg, summary_reply(summary, manifest))
        except Refused as exc:
            await _answer(msg, {"error": str(exc), "refused": True})
        except Exception as exc:
            log.exception("live backup")
            await _answer(msg, {"error": f"the backup failed: {type(exc).__name__}: {exc}"})

    def _target(self, folder: str | None) -> Path:
        from helpline.cli.backup import Refused

        if folder:
            path = Path(folder)
            if not path.is_absolute():
                raise Refused(f"{folder} is not an absolute path")
            return path
        if not self.backup_dir:
            raise Refused(
                "no server-side backup folder: set HELPLINE_BACKUP_DIR where helpline up runs "
                "(or run `helpline backup DIR` on its machine)"
            )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return Path(self.backup_dir) / f"backup-{stamp}"


async def _answer(msg: Msg, body: dict[str, Any]) -> None:
    if msg.reply:
        with contextlib.suppress(Exception):
            await msg.respond(json.dumps(body, default=str).encode())
