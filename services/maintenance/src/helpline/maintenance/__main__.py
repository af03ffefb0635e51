"""`helpline-maintenance` (or `python -m helpline.maintenance`): the maintenance service alone in this process."""

from __future__ import annotations

from helpline.common.serving import run_service
from helpline.maintenance.app import MaintenanceComponent
from helpline.maintenance.settings import MaintenanceSettings


def main() -> None:
    """Run the maintenance tasks and periodic jobs, against the NATS server in HELPLINE_NATS_URL, until SIGTERM."""
    settings = MaintenanceSettings()
    run_service("maintenance", settings, lambda: MaintenanceComponent(settings))


if __name__ == "__main__":
    main()
