"""Maintenance settings: the only module of the service that reads the environment."""

from __future__ import annotations

from pydantic import Field

from helpline.common.settings import HelplineSettings


class MaintenanceSettings(HelplineSettings):
    maintenance_concurrency: int = Field(default=1, description="Maintenance jobs run at once.")
    maintenance_reconcile_every_s: float = Field(
        default=60.0,
        ge=0,
        description="How often parents left behind are looked for and recounted (0: never).",
    )
    maintenance_sources_every_s: float = Field(
        default=5.0,
        ge=0,
        description="How often due sources are looked for and their crawls started (0: never).",
    )
    maintenance_lease_ttl_s: float = Field(
        default=30.0,
        gt=0,
        description="How long the schedule's lease lasts unrenewed: a replica that dies is "
        "replaced after this at most.",
    )
