"""CLI settings: the only module of the CLI that reads the environment."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr

from helpline.common.serving.settings import ServingSettings


class CliSettings(ServingSettings):
    api_url: str = Field(
        default="",
        description="The gateway the CLI's commands call (default: http://HTTP_HOST:HTTP_PORT).",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="The gateway's bootstrap admin key; `helpline up` without it makes one "
        "in the data dir.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="API key the CLI sends (default: the admin key `helpline up` keeps in "
        "the data dir).",
    )
    nats_port: int = Field(
        default=0, description="Port of the nats-server `helpline up` starts (0: a free one)."
    )
    nats_listen: str = Field(
        default="127.0.0.1",
        description="Address the nats-server `helpline up` starts listens on; beyond loopback "
        "(0.0.0.0, a LAN address) it takes only user `helpline` with the password it makes "
        "in the data dir (`nats-password`, owner-only).",
    )
    up_own_processes: list[Literal["gateway", "scraper", "maintenance"]] = Field(
        default=["gateway"],
        description="Services `helpline up` runs as child processes of their own, so their "
        "Python code and the rest take no turns on one interpreter lock (embedder and rag "
        "share Qdrant Edge and stay in up's process). Empty: everything in one process.",
    )

    backup_dir: str = Field(
        default="",
        description="Where `POST /api/v1/admin/backup` writes live backups of `helpline up` "
        "(a new folder each); empty: that route is refused.",
    )
    up_probes_port: int = Field(
        default=8081,
        description="Where `helpline up`'s own process (the workers it hosts) answers "
        "/healthz, /readyz and /metrics when the gateway runs apart (0: a free port, logged).",
    )

    @property
    def gateway_url(self) -> str:
        return self.api_url.rstrip("/") or f"http://{self.http_host}:{self.http_port}"


def environment_with(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment with `overrides`, for a child process."""
    return {**os.environ, **overrides}


def use_admin_key(key: str) -> None:
    """Make `key` this process's HELPLINE_ADMIN_KEY: its gateway's and its children's."""
    os.environ["HELPLINE_ADMIN_KEY"] = key
