"""Maintenance settings: the only module of the service that reads the environment."""

from __future__ import annotations

from pydantic import Field

from helpline.common.settings import HelplineSettings


class MaintenanceSettings(HelplineSettings):
    maintenance_concurrency: int = Field(default=1, description="Maintenance jobs run at once.")
