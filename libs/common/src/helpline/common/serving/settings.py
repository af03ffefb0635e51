"""Settings of a hosting process: the only module of helpline.common.serving that reads the environment."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from helpline.common.settings import HelplineSettings

EventLoop = Literal["uvloop", "asyncio"]


class ServingSettings(HelplineSettings):
    """What a process that hosts services needs beyond the common settings."""

    event_loop: EventLoop = Field(
        default="uvloop",
        description="The event loop services run on: uvloop (faster sockets and scheduling) "
        "or the standard library's.",
    )
