"""Services authenticate to NATS: a user and password from the settings (or the URL), TLS
checked against a CA of our own, and `helpline up`'s own server, which wants a password
once it listens beyond loopback. Real nats-servers on free ports; the password never
reaches a log line."""

from __future__ import annotations

import logging
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from e2e_helpers import wait_terminal
from nats.errors import Error as NatsError
from nats.errors import NoServersError
from tls_helpers import make_tls

from helpline.cli.natsserver import PASSWORD_FILE, USER, NatsServer, free_port, is_loopback
from helpline.cli.runner import embedded_nats
from helpline.cli.settings import CliSettings
from helpline.common.bus import Bus, NatsAuth
from helpline.common.layout import BusLayout
from helpline.common.settings import HelplineSettings
from helpline.testing import HelplineUp

SECRET = "s3cret-Pa55-word"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[NatsServer]:
    """A server that takes only `helpline` with SECRET."""
    with NatsServer(tmp_path / "nats", password=SECRET) as server:
        yield server


async def refused(url: str, **auth: str) -> bool:
    """Whether the server turns this connection away (no retrying)."""
    nc = nats.NATS()
    try:
        await nc.connect(url, allow_reconnect=False, connect_timeout=5, **auth)  # type: ignore[arg-type]
    except (NatsError, NoServersError, OSError) as exc:
        return "authorization" in str(exc).lower()
    finally:
        await nc.close()  # a refused connect leaves its socket open otherwise
    return False


async def declared(bus: Bus, url: str, auth: NatsAuth | None = None) -> bool:
    await bus.connect(url, name="auth-test", auth=auth)
    try:
        await bus.bootstrap()
        return await bus.streams_present()
    finally:
        await bus.close()


async def test_the_bus_authenticates_from_settings_and_never_logs_the_password(
    guarded: NatsServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = HelplineSettings(nats_url=guarded.url, nats_user=USER, nats_password=SECRET)  # type: ignore[arg-type]
    auth = NatsAuth.from_settings(settings)
    assert SECRET not in repr(auth)
    assert SECRET not in repr(settings)
    bus = Bus(BusLayout(prefix=prefix, file_storage=False))
    assert await declared(bus, guarded.url, auth)
    # Credentials in the URL work as well, and the bus reports the server without them.
    in_url = f"nats://{USER}:{SECRET}@127.0.0.1:{guarded.port}"
    await bus.connect(in_url, name="auth-test-url")
    try:
        assert bus.connection() == {"connected": True, "url": f"127.0.0.1:{guarded.port}"}
        assert bus.nc.new_inbox().startswith(f"_INBOX_{USER}.")  # its own inbox prefix
    finally:
        await bus.close()
    assert SECRET not in caplog.text
    # Without the password, or with another, the server turns the client away.
    assert await refused(guarded.url)
    assert await refused(guarded.url, user=USER, password="not-it")
    assert not await refused(guarded.url, user=USER, password=SECRET)


async def test_tls_checked_against_our_own_ca(tmp_path: Path, prefix: str) -> None:
    ca, cert, key = make_tls(tmp_path / "tls")
    tls = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}\n'
    with NatsServer(tmp_path / "nats", password=SECRET, config=tls) as server:
        url = f"tls://localhost:{server.port}"
        bus = Bus(BusLayout(prefix=prefix, file_storage=False))
        assert await declared(bus, url, NatsAuth(user=USER, password=SECRET, tls_ca=ca))
        # The system's CAs (what a client without HELPLINE_NATS_TLS_CA trusts) do not know ours.
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(server.port, ssl.create_default_context())
        handshake(server.port, ssl.create_default_context(cafile=str(ca)))


def handshake(port: int, context: ssl.SSLContext) -> None:
    """A NATS client's TLS upgrade: read the server's INFO, then the handshake."""
    with socket.create_connection(("localhost", port), timeout=5) as raw:
        assert raw.recv(4096).startswith(b"INFO ")
        with context.wrap_socket(raw, server_hostname="localhost"):
            pass


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.10")
    assert not is_loopback("nats.example.com")


async def test_helpline_ups_server_on_loopback_needs_no_password(tmp_path: Path) -> None:
    settings = CliSettings(data_dir=tmp_path, nats_port=free_port())
    assert settings.nats_listen == "127.0.0.1"
    nats_server, connection = embedded_nats(settings, tmp_path)
    try:
        assert connection == {"nats_url": f"nats://127.0.0.1:{nats_server.port}"}
        assert not (tmp_path / PASSWORD_FILE).exists()
        assert not await refused(nats_server.url)
    finally:
        nats_server.stop()


async def test_helpline_ups_server_beyond_loopback_wants_its_password(
    tmp_path: Path, prefix: str
) -> None:
    settings = CliSettings(data_dir=tmp_path, nats_listen="0.0.0.0", nats_port=free_port())
    nats_server, connection = embedded_nats(settings, tmp_path)
    try:
        stored = tmp_path / PASSWORD_FILE
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        password = stored.read_text().strip()
        assert len(password) >= 32
        assert connection["nats_user"] == USER
        # The processes `helpline up` starts connect with these settings.
        clients = settings.model_copy(update=connection)
        bus = Bus(BusLayout(prefix=prefix, file_storage=False))
        assert await declared(bus, nats_server.url, NatsAuth.from_settings(clients))
        assert await refused(nats_server.url)
        config = tmp_path / "nats" / "nats-server.conf"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
    finally:
        nats_server.stop()
    # The next start keeps the same password.
    again, connection_again = embedded_nats(settings, tmp_path)
    again.stop()
    assert connection_again["nats_password"] == connection["nats_password"]


async def test_helpline_up_beyond_loopback_its_processes_use_the_password(
    tmp_path: Path,
) -> None:
    """The real `helpline up`, its nats-server on every address: the gateway (a child
    process) and the workers (up's own) connect with the password, a ping goes through,
    and nobody without it gets in."""
    nats_port = free_port()
    env = {
        "HELPLINE_NATS_LISTEN": "0.0.0.0",
        "HELPLINE_NATS_PORT": str(nats_port),
        "HELPLINE_LOG_JSON": "false",
    }
    data = tmp_path / "data"
    with HelplineUp(data, env) as up:
        stored = data / PASSWORD_FILE
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        password = stored.read_text().strip()
        async with httpx.AsyncClient(base_url=up.url, headers=up.headers, timeout=30) as client:
            accepted = await client.post("/api/v1/maintenance/ping", json={})
            assert accepted.status_code == 202, accepted.text
            record = await wait_terminal(client, accepted.json()["task_id"], 60)
            assert record["status"] == "succeeded", record
        url = f"nats://127.0.0.1:{nats_port}"
        assert await refused(url)
        assert not await refused(url, user=USER, password=password)
    assert password not in up.log_path.read_text()
