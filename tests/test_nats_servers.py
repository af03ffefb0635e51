"""HELPLINE_NATS_URL with several servers, comma-separated (as the NATS CLI takes them):
the bus connects to one of them and, when that server dies, carries on with another, its
subscriptions with it. Two real nats-servers, not clustered, each on its own loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from e2e_helpers import eventually

from helpline.cli.natsserver import NatsServer
from helpline.common.bus import Bus, servers
from helpline.common.layout import BusLayout


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[NatsServer, NatsServer]]:
    with NatsServer(tmp_path / "a") as first, NatsServer(tmp_path / "b") as second:
        yield first, second


def test_servers_are_split_on_commas() -> None:
    assert servers("nats://a:4222") == ["nats://a:4222"]
    assert servers(" nats://a:4222, nats://b:4223 ,") == ["nats://a:4222", "nats://b:4223"]
    with pytest.raises(ValueError, match="no NATS server URL"):
        servers(" , ")


async def test_the_bus_carries_on_with_the_surviving_server(
    two_servers: tuple[NatsServer, NatsServer], prefix: str
) -> None:
    by_port = {server.port: server for server in two_servers}
    bus = Bus(BusLayout(prefix=prefix, file_storage=False))
    await bus.connect(",".join(s.url for s in two_servers), name="two-servers")
    try:
        used = by_port.pop(bus.nc.connected_url.port)  # type: ignore[union-attr]
        (survivor,) = by_port.values()
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def keep(msg: nats.aio.msg.Msg) -> None:
            await received.put(msg.data)

        await bus.nc.subscribe(f"{prefix}.ping", cb=keep)
        await bus.nc.flush()
        used.kill()

        async def moved() -> bool:
            return bus.connection() == {"connected": True, "url": f"127.0.0.1:{survivor.port}"}

        assert await eventually(moved, timeout_s=20)
        # The subscription moved with it: a message published at the survivor arrives...
        other = await nats.connect(survivor.url)
        try:
            await other.publish(f"{prefix}.ping", b"from the survivor")
            await other.flush()
            assert await asyncio.wait_for(received.get(), 10) == b"from the survivor"
        finally:
            await other.close()

        # ...and the bus publishes and requests there too.
        async def echo(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(msg.data)

        await bus.nc.subscribe(f"{prefix}.echo", cb=echo)
        reply = await bus.nc.request(f"{prefix}.echo", b"still here", timeout=10)
        assert reply.data == b"still here"
        # And JetStream on the survivor: the layout declares there.
        await bus.bootstrap()
        assert await bus.streams_present()
    finally:
        await bus.close()
