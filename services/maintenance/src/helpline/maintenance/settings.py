"""Maintenance settings: the only module of the service that reads the environment."""

from __future__ import annotations

from pydantic import Field

from helpline.common.settings import HelplineSettings, WebhookAddressSettings


class MaintenanceSettings(HelplineSettings, WebhookAddressSettings):
    maintenance_concurrency: int = Field(default=1, description="Maintenance jobs run at once.")
    maintenance_reconcile_every_s: float = Field(
        default=60.0,
        ge=0,
        description="How often parents left behind are looked for and recounted (0: never).",
    )
    maintenance_watchdog_every_s: float = Field(
        default=60.0,
        ge=0,
        description="How often tasks left running with no live worker are looked for and "
        "settled (0: never).",
    )
    maintenance_watchdog_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a running task's record may stay unchanged before the watchdog "
        "looks at it, and its margin past the kind's longest run time.",
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
    webhook_concurrency: int = Field(
        default=32, ge=1, description="Webhook deliveries one replica makes at once."
    )
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, description="How long a receiver may take to answer a delivery."
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="Attempts of a delivery before it is dead-lettered."
    )
    webhook_backoff_base_s: float = Field(
        default=5.0, gt=0, description="First retry delay of a delivery; doubles each attempt."
    )
    webhook_backoff_cap_s: float = Field(
        default=3600.0,
        gt=0,
        description="Longest retry delay of a delivery (a longer Retry-After is cut to it).",
    )
    webhook_breaker_failures: int = Field(
        default=5, ge=1, description="Failed deliveries in a row that open a receiver's breaker."
    )
    webhook_breaker_open_s: float = Field(
        default=60.0, gt=0, description="How long a receiver's breaker stays open."
    )
