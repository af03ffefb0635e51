"""The gateway's front: its API (with /healthz and /readyz) served by uvicorn on the hosting
process's event loop, started after the components and stopped before them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence

import uvicorn
from fastapi import FastAPI

from helpline.common.runtime import Component, Host
from helpline.common.settings import HelplineSettings
from helpline.gateway.app import GatewayComponent

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handling: the hosting process owns shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """The API on `host`:`port`; `start` returns once it listens."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server = _Server(
            uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
        )
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        serving = self._serving = asyncio.create_task(self._server.serve())
        while not self._server.started and not serving.done():  # noqa: ASYNC110 - uvicorn exposes a flag only
            await asyncio.sleep(0.02)
        if serving.done():
            serving.result()
            raise RuntimeError(f"the gateway could not listen on {self.host}:{self.port}")
        log.info("gateway listening on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        serving, self._serving = self._serving, None
        if serving is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await serving


def api_front(settings: HelplineSettings, host: Host, components: Sequence[Component]) -> ApiServer:
    """The front of a process that hosts the gateway: the API on the process's HTTP port."""
    gateway = next(c for c in components if isinstance(c, GatewayComponent))
    return ApiServer(gateway.app, settings.http_host, settings.http_port)
