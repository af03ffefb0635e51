"""The generated NATS permissions (`helpline.common.permissions`) on a real nats-server:
every service, as its own user and its own bus connection, does its real work through a
whole flow (webhooks, crawl, scrape, dead letter and replay, documents, questions plain and
streamed, maintenance, cancelling, every view, the answer cache, API keys, the trace
view) and the server refuses none of it; what a service must not do (the scraper
answering a question, rag submitting a scrape, reading another service's inbox or the
API keys) it refuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import nats
import pytest
from conftest import settings_for
from e2e_helpers import eventually, wait_terminal
from nats.aio.client import Client
from nats.aio.msg import Msg
from test_webhooks import receiving

from helpline.cli.natsserver import NatsServer
from helpline.common import spanstore, subjects
from helpline.common.bus import Bus
from helpline.common.embedding import Embedder
from helpline.common.knowledge import Knowledge
from helpline.common.messages import ScrapeTask, new_task_id, utcnow
from helpline.common.observability import setup_tracing
from helpline.common.permissions import SERVICES, inbox_prefix, nats_authorization
from helpline.common.records import Status, TaskRecord
from helpline.common.runtime import Component, Host
from helpline.common.subjects import Bucket, Kind, Priority
from helpline.common.taskstore import TaskStore
from helpline.common.vectors import open_store
from helpline.embedder.app import EmbedderComponent
from helpline.embedder.settings import EmbedderSettings
from helpline.gateway.app import GatewayComponent
from helpline.gateway.settings import GatewaySettings
from helpline.maintenance.app import MaintenanceComponent
from helpline.maintenance.settings import MaintenanceSettings
from helpline.rag.app import RagComponent
from helpline.rag.settings import RagSettings
from helpline.scraper.app import ScraperComponent
from helpline.scraper.settings import ScraperSettings
from helpline.testing import TEST_ADMIN_KEY, bearer

PASSWORDS = {service: f"{service}-test-password" for service in SERVICES}


@pytest.fixture
def guarded(tmp_path: Path, prefix: str) -> Iterator[NatsServer]:
    """A server whose only users are the services, with the permissions made for `prefix`."""
    config = nats_authorization(SERVICES, prefix, PASSWORDS)
    with NatsServer(tmp_path / "nats", config=config) as server:
        yield server


def violations(server: NatsServer) -> list[str]:
    return [line for line in server.log_path.read_text().splitlines() if "Violation" in line]


class Peer:
    """A bare connection as one service's user, keeping the errors the server sends it."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def refused(self, what: str) -> bool:
        """Whether the server reported a permissions violation naming `what`."""

        async def reported() -> bool:
            return any("permissions violation" in e and what.lower() in e for e in self.errors)

        await self.nc.flush()
        return await eventually(reported, timeout_s=10, every_s=0.05)


@pytest.fixture
async def peers(guarded: NatsServer) -> AsyncIterator[dict[str, Peer]]:
    connected: dict[str, Peer] = {}
    for service in SERVICES:
        errors: list[str] = []

        async def keep(exc: Exception, errors: list[str] = errors) -> None:
            errors.append(str(exc).lower())

        nc = await nats.connect(
            guarded.url,
            user=service,
            password=PASSWORDS[service],
            inbox_prefix=inbox_prefix(service),
            error_cb=keep,
            allow_reconnect=False,
        )
        connected[service] = Peer(nc, errors)
    try:
        yield connected
    finally:
        for peer in connected.values():
            await peer.nc.close()


async def test_what_a_service_may_not_do_the_server_refuses(
    guarded: NatsServer, peers: dict[str, Peer], prefix: str
) -> None:
    gateway, scraper, rag = peers["gateway"], peers["scraper"], peers["rag"]
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def keep(msg: Msg) -> None:
        await replies.put(msg.data)

    inbox = f"{prefix}.replies.gw1"
    await gateway.nc.subscribe(f"{inbox}.*", cb=keep)
    await gateway.nc.flush()
    # rag answers on the gateway's reply inbox; the scraper may not.
    await scraper.nc.publish(f"{inbox}.t1", b"a forged answer")
    assert await scraper.refused(f'publish to "{inbox}.t1"')
    await rag.nc.publish(f"{inbox}.t2", b"the answer")
    assert await asyncio.wait_for(replies.get(), 10) == b"the answer"
    assert replies.empty()

    # The gateway submits scrapes; rag may not (nothing reaches the stream).
    subject = subjects.task(Kind.SCRAPE, Priority.NORMAL, prefix)
    task = ScrapeTask(task_id="t-forged", url="http://127.0.0.1/", brand="acme")
    await rag.nc.publish(subject, task.model_dump_json().encode())
    assert await rag.refused(f'publish to "{subject}"')
    js = gateway.nc.jetstream()
    await js.add_stream(
        name=subjects.stream(Kind.SCRAPE, prefix), subjects=[f"{prefix}.tasks.scrape.*"]
    )
    await rag.nc.publish(subject, task.model_dump_json().encode())
    await gateway.nc.publish(subject, task.model_dump_json().encode())
    await gateway.nc.flush()

    async def one_stored() -> bool:
        return (await js.stream_info(subjects.stream(Kind.SCRAPE, prefix))).state.messages == 1

    assert await eventually(one_stored, timeout_s=10)

    # Nobody reads another service's inbox, and only the gateway reads the API keys.
    await scraper.nc.subscribe(f"{inbox_prefix('gateway')}.>")
    assert await scraper.refused(f'subscription to "{inbox_prefix("gateway")}.>"')
    keys = f"KV_{subjects.bucket(Bucket.KEYS, prefix)}"
    await peers["embedder"].nc.publish(f"$JS.API.DIRECT.GET.{keys}.$KV.x.k", b"")
    assert await peers["embedder"].refused(f"$js.api.direct.get.{keys.lower()}")
    key_entry = f"$KV.{subjects.bucket(Bucket.KEYS, prefix)}.k"
    await peers["maintenance"].nc.publish(key_entry, b"x")
    assert await peers["maintenance"].refused(f'publish to "{key_entry}"')
    # The server says so in its log too (what the flow test checks is absent).
    assert any(f'"{inbox}.t1"' in line for line in violations(guarded))


@pytest.fixture
def trace_store() -> Iterator[spanstore.SpanStore]:
    """Spans go to the trace store (as with HELPLINE_TRACE_STORE on), for this test only."""
    provider = setup_tracing("helpline-tests", otlp_endpoint=None, record=True)
    store = spanstore.install(provider)
    yield store
    store.shutdown()


async def test_each_service_as_its_own_user_does_its_whole_job(
    guarded: NatsServer,
    prefix: str,
    tmp_path: Path,
    model: Embedder,
    docs_site: str,
    trace_store: spanstore.SpanStore,
) -> None:
    def settings(cls: type, service: str) -> object:
        return settings_for(
            cls,
            guarded.url,
            prefix,
            tmp_path,
            nats_user=service,
            nats_password=PASSWORDS[service],
            # Scheduled reconciling: maintenance submits its own tasks and reads the ledger.
            maintenance_reconcile_every_s=0.5,
            # Sources: maintenance holds the schedule's lease and starts their crawls.
            maintenance_sources_every_s=0.2,
            # The watchdog: reads heartbeats and records, walks work queues, settles.
            maintenance_watchdog_every_s=0.5,
        )

    store = open_store(url=None, data_dir=tmp_path, collection="helpline", dim=model.dim)
    knowledge = Knowledge(model=model, store=store)
    gateway = GatewayComponent(settings(GatewaySettings, "gateway"))  # type: ignore[arg-type]
    components: dict[str, Component] = {
        "gateway": gateway,
        "scraper": ScraperComponent(settings(ScraperSettings, "scraper")),  # type: ignore[arg-type]
        "embedder": EmbedderComponent(
            settings(EmbedderSettings, "embedder"),  # type: ignore[arg-type]
            knowledge=knowledge,
        ),
        "rag": RagComponent(settings(RagSettings, "rag"), knowledge=knowledge),  # type: ignore[arg-type]
        "maintenance": MaintenanceComponent(settings(MaintenanceSettings, "maintenance")),  # type: ignore[arg-type]
    }
    hosts: list[Host] = []
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app),
        base_url="http://gateway",
        headers=bearer(TEST_ADMIN_KEY),
        timeout=60,
    )
    try:
        for service, component in components.items():
            host = Host(component.settings, [component], name=f"{service}-{prefix}")  # type: ignore[attr-defined]
            await host.start()
            hosts.append(host)
        await run_the_flow(client, docs_site)
        await ghost_settled(client, hosts[0].bus)
    finally:
        await client.aclose()
        for host in reversed(hosts):
            await host.stop()
        knowledge.close()
    assert violations(guarded) == []


async def ghost_settled(client: httpx.AsyncClient, bus: Bus) -> None:
    """A page left running by a process that never beat, its message gone: maintenance's
    watchdog fails it (heartbeats, records, both work queues walked, an event emitted)."""
    ghost = TaskRecord(
        task_id=new_task_id(),
        kind=Kind.SCRAPE,
        status=Status.RUNNING,
        replica="ghost-1",
        updated_at=utcnow() - timedelta(minutes=5),
    )
    await TaskStore(bus).create(ghost)

    async def failed() -> bool:
        record = (await client.get(f"/api/v1/tasks/{ghost.task_id}")).json()
        return bool(record["status"] == "failed")

    assert await eventually(failed, timeout_s=30)


async def run_the_flow(client: httpx.AsyncClient, site: str) -> None:
    async def accepted(path: str, body: dict[str, object]) -> str:
        response = await client.post(f"/api/v1/{path}", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["task_id"])

    async def finished(path: str, body: dict[str, object], status: str = "succeeded") -> None:
        record = await wait_terminal(client, await accepted(path, body), 120)
        assert record["status"] == status, record

    brand = {"brand": "acme"}
    with receiving("127.0.0.1") as receiver:
        # Webhooks: the gateway keeps them and announces; maintenance delivers, signed.
        made = await client.post(
            "/api/v1/webhooks",
            json={"url": receiver.url("/hook"), "events": ["crawl.completed"], **brand},
        )
        assert made.status_code == 201, made.text
        hook = f"/api/v1/webhooks/{made.json()['id']}"
        await finished("crawl", {"url": f"{site}/index.html", "max_pages": 6, **brand})
        assert (await client.post(f"{hook}/test")).status_code == 202

        async def delivered() -> bool:
            items = (await client.get(f"{hook}/deliveries")).json()["items"]
            return len(items) == 2 and {d["status"] for d in items} == {"delivered"}

        assert await eventually(delivered, timeout_s=30)
        assert len(receiver.at("/hook")) == 2
        assert (await client.delete(hook)).status_code == 204
    await finished("scrape", {"url": f"{site}/privacy.html", **brand})
    # A source: the gateway keeps it, maintenance starts its crawl, the scraper crawls it.
    made = await client.post(
        "/api/v1/sources",
        json={"url": f"{site}/index.html", "max_pages": 3, "refresh_s": 300, **brand},
    )
    assert made.status_code == 201, made.text
    source = f"/api/v1/sources/{made.json()['id']}"

    async def source_crawled() -> bool:
        last = (await client.get(source)).json()["last_crawl"]
        return bool(last) and last["status"] == "succeeded"

    assert await eventually(source_crawled, timeout_s=60)
    assert (await client.get("/api/v1/sources")).status_code == 200
    assert (await client.patch(source, json={"refresh_s": 600})).status_code == 200
    # Its pages go too: the gateway asks the embedder, which deletes points, state and text.
    deleted = await client.delete(source)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["documents_removed"] >= 1, deleted.json()
    await finished("scrape/batch", {"urls": [f"{site}/terms.html"], **brand})
    await finished("embed", {"documents": [{"text": "Hold reset for ten seconds.", **brand}]})
    # A page that never answers in time: retried, then dead-lettered; replayed.
    await finished("scrape", {"url": f"{site}/troubleshooting/slow.html", **brand}, "failed")
    letters = (await client.get("/api/v1/dlq")).json()
    assert [letter["task_id"] for letter in letters], letters
    replay = await client.post(f"/api/v1/dlq/{letters[0]['task_id']}/replay")
    assert replay.status_code == 202, replay.text
    # Questions, the second from the cache, one streamed.
    for _ in range(2):
        answer = await client.post("/api/v1/query", json={"question": "How do I install it?"})
        assert answer.status_code == 200, answer.text
    streamed = await client.post("/api/v1/query", json={"question": "Privacy?", "stream": True})
    assert streamed.status_code == 200
    assert "event: sources" in streamed.text
    trace_id = answer.headers["X-Trace-Id"]
    await finished("maintenance/ping", {})
    waiting = await accepted("maintenance/ping", {"delay_ms": 5000})
    cancelled = await client.delete(f"/api/v1/tasks/{waiting}")
    assert cancelled.status_code == 200, cancelled.text
    assert (await wait_terminal(client, waiting, 30))["status"] == "cancelled"
    for view in (
        "tasks",
        "queues",
        "workers",
        "system/status",
        "breakers",
        "cache/stats",
        "metrics/stats",
        "metrics/slow-requests",
        "metrics/errors",
        "keys",
        "documents",
    ):
        response = await client.get(f"/api/v1/{view}")
        assert response.status_code == 200, (view, response.text)
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200

    async def traced() -> bool:
        return (await client.get(f"/api/v1/traces/{trace_id}")).status_code == 200

    assert await eventually(traced, timeout_s=10)
    assert (await client.post("/api/v1/cache/clear")).status_code == 200
    made = await client.post("/api/v1/keys", json={"name": "k1", "scopes": ["query"]})
    assert made.status_code == 201, made.text
    revoked = await client.delete(f"/api/v1/keys/{made.json()['id']}")
    assert revoked.status_code == 204
