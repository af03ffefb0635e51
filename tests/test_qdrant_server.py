"""The qdrant-client path end to end: against qdrant-client's local mode always, and against a
real Qdrant server in a container where a Docker engine is reachable."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import System, start_system, stop_system
from e2e_helpers import wait_terminal

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.common.vectors import QdrantServerStore, open_store

QDRANT_IMAGE = "qdrant/qdrant:v1.15.5"


def docker_unavailable() -> str | None:
    """Why no container can run here, or None when a Docker engine answers."""
    import docker

    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return "no Docker engine here (no DOCKER_HOST, no /var/run/docker.sock); the server path ran against local mode only"
    try:
        client = docker.DockerClient.from_env(timeout=3)
    except Exception as exc:
        return f"no Docker engine reachable ({type(exc).__name__}); the server path ran against local mode only"
    try:
        client.ping()
    except Exception as exc:
        return f"the Docker engine does not answer ({type(exc).__name__})"
    finally:
        client.close()
    return None


@pytest.fixture(scope="module")
def qdrant_server_url() -> Iterator[str]:
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    from testcontainers.core.container import DockerContainer

    with DockerContainer(QDRANT_IMAGE).with_exposed_ports(6333) as container:
        url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(6333)}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url


async def crawl_and_ask(system: System, docs_site: str) -> dict:
    response = await system.client.post(
        "/api/v1/crawl", json={"url": f"{docs_site}/index.html", "brand": "acme"}
    )
    parent = await wait_terminal(system.client, response.json()["task_id"], timeout_s=90)
    assert parent["status"] == "succeeded", parent
    response = await system.client.post(
        "/api/v1/query", json={"question": "What does the error FW-409 mean?", "brand": "acme"}
    )
    assert response.status_code == 200
    return response.json()


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
async def test_pipeline_over_qdrant_client_local_mode(
    nats_server: NatsServer, prefix: str, tmp_path: Path, model: Embedder, docs_site: str
) -> None:
    system = await start_system(nats_server.url, prefix, tmp_path, model, qdrant_url=":memory:")
    try:
        assert isinstance(system.knowledge.store, QdrantServerStore)
        answer = await crawl_and_ask(system, docs_site)
        assert answer["sources"][0]["url"] == f"{docs_site}/config/firewall.html"
        assert "FW-409" in answer["answer"]
    finally:
        await stop_system(system)


async def test_pipeline_over_a_real_qdrant_server(
    qdrant_server_url: str,
    nats_server: NatsServer,
    prefix: str,
    tmp_path: Path,
    model: Embedder,
    docs_site: str,
) -> None:
    store = open_store(url=qdrant_server_url, data_dir=tmp_path, collection=prefix, dim=model.dim)
    store.close()
    system = await start_system(
        nats_server.url, prefix, tmp_path, model, qdrant_url=qdrant_server_url, collection=prefix
    )
    try:
        answer = await crawl_and_ask(system, docs_site)
        assert answer["sources"][0]["url"] == f"{docs_site}/config/firewall.html"
    finally:
        await stop_system(system)
