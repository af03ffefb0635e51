"""Prometheus' scrape of the gateway: open, outside /api/v1, like the probes."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request, Response

from helpline.common import metrics, subjects
from helpline.common.errors import BUS_ERRORS
from helpline.gateway import views
from helpline.gateway.tasks import Tasks

log = logging.getLogger(__name__)
router = APIRouter(tags=["probes"])

#: The bus-wide gauges (queues, dead letters, cache entries) are read at most this often.
REFRESH_S = 5.0


class _BusGauges:
    """The gauges read from JetStream, refreshed on a scrape at most every `REFRESH_S`."""

    def __init__(self) -> None:
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self, tasks: Tasks) -> None:
        async with self._lock:
            if time.monotonic() - self._at < REFRESH_S:
                return
            self._at = time.monotonic()
            try:
                await self._read(tasks)
            except BUS_ERRORS as exc:  # a scrape still answers, with the last values read
                log.warning("metrics: the bus did not answer (%r)", exc)

    @staticmethod
    async def _read(tasks: Tasks) -> None:
        for row in await views.queues(tasks.bus):
            labels = (row["kind"], row["priority"])
            metrics.QUEUE_PENDING.labels(*labels).set(row["pending"])
            metrics.QUEUE_IN_FLIGHT.labels(*labels).set(row["in_flight"])
            metrics.QUEUE_OLDEST_AGE.labels(*labels).set(row["oldest_age_s"] or 0.0)
        dlq = await tasks.bus.js.stream_info(subjects.dlq_stream(tasks.bus.layout.prefix))
        metrics.DEAD_LETTERS.set(dlq.state.messages or 0)
        if tasks.cache is not None:
            metrics.CACHE_ENTRIES.set((await tasks.cache.stats()).entries)


_gauges = _BusGauges()


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def prometheus_metrics(request: Request) -> Response:
    """This gateway's metrics in Prometheus' text format, with the bus-wide gauges."""
    tasks: Tasks | None = getattr(request.app.state, "tasks", None)
    if tasks is not None:
        await _gauges.refresh(tasks)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
