"""The bus: one NATS connection per process, its layout declared, tasks and events published.

The connection is nats-py's, opened by `Bus.connect` (several server URLs, comma-separated,
reconnecting for ever). Tasks and events, the hot path, are published straight to
JetStream with pipelined acknowledgements (`acks.Acks`), each in a producer span whose W3C
context rides in the message's headers (consumers continue it: `worker.TaskConsumer`,
the gateway's tracker).

A `Bus` is also where a process keeps what its task pools share: the bound buckets and
the stores on them (`kv`), the cancelled tasks (`cancellations`), the circuit breakers
(`breaker`) and batch work's yielding to urgent work (`urgency`). Each lives in its own
module; the bus only holds the one instance of each.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import nats
from nats.errors import Error as NatsError
from nats.js.errors import APIError
from opentelemetry import propagate, trace
from pydantic import BaseModel

from helpline.common import metrics, subjects
from helpline.common.acks import Acks, Publish
from helpline.common.breaker import BreakerBoard
from helpline.common.cancellations import Cancellations
from helpline.common.errors import Overloaded
from helpline.common.kv import Buckets, Deferrals
from helpline.common.layout import BusLayout, declare
from helpline.common.messages import TaskEvent, TaskMessage
from helpline.common.observability import span
from helpline.common.permissions import inbox_prefix
from helpline.common.subjects import Kind
from helpline.common.urgency import Urgency

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from helpline.common.settings import HelplineSettings

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("helpline.bus")


@dataclass(frozen=True)
class NatsAuth:
    """Who a process is to NATS: a user and password (or none: then those a URL carries, or
    none at all), and the CA that `tls://` servers' certificates are checked against."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None

    @classmethod
    def from_settings(cls, settings: HelplineSettings) -> NatsAuth:
        """HELPLINE_NATS_USER, HELPLINE_NATS_PASSWORD and HELPLINE_NATS_TLS_CA."""
        password = settings.nats_password
        return cls(
            user=settings.nats_user,
            password=password.get_secret_value() if password is not None else None,
            tls_ca=settings.nats_tls_ca,
        )

    def tls_context(self) -> ssl.SSLContext | None:
        """A context trusting `tls_ca`; None leaves nats-py to the system's CAs."""
        return ssl.create_default_context(cafile=str(self.tls_ca)) if self.tls_ca else None


class Bus:
    """One process's handle on the bus.

    `publish` replaces JetStream for unit tests of one handler (nothing to connect to).
    """

    def __init__(self, layout: BusLayout, *, publish: Publish | None = None) -> None:
        self.layout = layout
        self._publish = publish or self._publish_to_jetstream
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._acks: Acks | None = None
        self.buckets = Buckets(layout)
        self.cancellations = Cancellations(self.buckets)
        self.deferrals = Deferrals(self.buckets)
        self.breakers = BreakerBoard()
        metrics.watch_breakers(self.breakers)
        # Shared by this process's task pools: batch work yields to urgent work.
        self.urgency = Urgency(layout.bulk_yield_window_s, layout.bulk_yield_starts_per_s)
        # This process as its heartbeat names it (`Host` sets it); its workers' events carry it.
        self.replica_id: str | None = None

    async def connect(self, url: str, *, name: str, auth: NatsAuth | None = None) -> None:
        """Connect to the servers of `url` (comma-separated), reconnecting for ever: when the
        server in use goes, nats-py moves to the next one of the list (or of those the
        cluster announced), and resubscribes there. `auth`: who this process is to NATS."""
        auth = auth or NatsAuth()
        self._nc = await nats.connect(
            servers=servers(url),
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            error_cb=_log_error,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            user=auth.user,
            password=auth.password,
            tls=auth.tls_context(),
            # Its own inboxes: the permissions let a user subscribe to those alone.
            inbox_prefix=inbox_prefix(auth.user or _url_user(url)),
        )
        self._js = self._nc.jetstream()
        self.buckets.attach(self._js)

    async def _disconnected(self) -> None:
        if self._nc is not None and self._nc.is_reconnecting:  # not when closed on purpose
            log.warning("lost the NATS server; reconnecting")

    async def _reconnected(self) -> None:
        log.warning("reconnected to %s", self.connection()["url"] or "?")

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "the bus is not connected"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "the bus is not connected"
        return self._js

    async def bootstrap(self, retry_s: float = 60.0) -> None:
        """Create streams, consumers and buckets if missing; safe to run from every replica.

        A cluster whose streams elect leaders (a server just restarted) leaves some requests
        unanswered for seconds: the declaration, idempotent, is tried again for `retry_s`
        rather than the process exiting."""
        deadline = time.monotonic() + retry_s
        while True:
            try:
                self.buckets.attach(self.js, await declare(self.js, self.layout))
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                log.warning("the bus did not answer while declaring the layout; trying again")
                await asyncio.sleep(0.5)

    async def streams_present(self) -> bool:
        """Readiness: connected and every stream declared."""
        if not self.nc.is_connected:
            return False
        try:
            for kind in Kind:
                await self.js.stream_info(self.layout.task_stream(kind))
            await self.js.stream_info(subjects.events_stream(self.layout.prefix))
        except (APIError, TimeoutError):
            return False
        return True

    def connection(self) -> dict[str, object]:
        """Whether the connection is up, and to which server (no credentials)."""
        url = self._nc.connected_url if self._nc is not None else None
        return {
            "connected": self._nc is not None and self._nc.is_connected,
            "url": url.netloc.rpartition("@")[2] if url is not None else None,
        }

    async def close(self) -> None:
        """Stop following cancellations, then drain and close the connection."""
        await self.cancellations.stop()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()
        self._nc = self._js = None
        self._acks = None

    async def publish(self, subject: str, payload: bytes, *, stream: str, msg_id: str) -> None:
        """Publish to a stream and wait for its acknowledgement, in a producer span whose
        context rides in the headers. Many may be in flight."""
        headers = {"Nats-Msg-Id": msg_id}
        with _producer_span(subject, headers):
            await self._publish(subject, payload, stream=stream, headers=headers)

    async def send(
        self, subject: str, message: BaseModel, headers: dict[str, str] | None = None
    ) -> None:
        """Publish a message on core NATS (no stream, no acknowledgement): a reply to a
        waiting inbox. Traced like `publish`."""
        out = dict(headers or {})
        with _producer_span(subject, out):
            await self.nc.publish(subject, message.model_dump_json().encode(), headers=out)

    async def _publish_to_jetstream(
        self, subject: str, payload: bytes, *, stream: str, headers: dict[str, str]
    ) -> None:
        headers["Nats-Expected-Stream"] = stream
        await self.acks.publish(subject, payload, headers)

    @property
    def acks(self) -> Acks:
        """This connection's publisher with pipelined acknowledgements."""
        if self._acks is None:
            self._acks = Acks(self.nc)
        return self._acks

    async def submit(self, kind: Kind, task: TaskMessage, *, msg_id: str | None = None) -> None:
        """Publish a task and wait for the stream's acknowledgement (the task id is the msg id)."""
        try:
            await self.publish(
                self.layout.task_subject(kind, task.priority),
                task.model_dump_json().encode(),
                stream=self.layout.task_stream(kind),
                msg_id=msg_id or task.task_id,
            )
        except APIError as exc:
            raise Overloaded(f"the {kind} queue is full; try again later") from exc
        except (TimeoutError, NatsError) as exc:
            raise Overloaded("the bus did not acknowledge in time; try again later") from exc

    async def emit(self, event: TaskEvent) -> None:
        """Report on a task; the gateway's tracker applies it to the task record."""
        await self.publish(
            self.layout.event_subject(event.kind),
            event.model_dump_json().encode(),
            stream=subjects.events_stream(self.layout.prefix),
            msg_id=event.event_id,
        )


def _url_user(url: str) -> str | None:
    return urlsplit(servers(url)[0]).username


def servers(url: str) -> list[str]:
    """The server URLs of a HELPLINE_NATS_URL: several may be given, comma-separated."""
    found = [u.strip() for u in url.split(",") if u.strip()]
    if not found:
        raise ValueError("no NATS server URL")
    return found


async def _log_error(exc: Exception) -> None:
    log.warning("nats: %r", exc)


@contextmanager
def _producer_span(subject: str, headers: dict[str, str]) -> Iterator[None]:
    """A publish's producer span (see `observability.span`), its context put in `headers`."""
    with span(
        _tracer,
        f"{subject} publish",
        kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
    ):
        propagate.inject(headers)
        yield
