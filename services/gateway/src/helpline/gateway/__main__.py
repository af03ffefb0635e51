"""`helpline-gateway` (or `python -m helpline.gateway`): the gateway alone in this process."""

from __future__ import annotations

from helpline.common.serving import run_service
from helpline.gateway.app import GatewayComponent
from helpline.gateway.server import api_front
from helpline.gateway.settings import GatewaySettings


def main() -> None:
    """Serve the REST API against the NATS server in HELPLINE_NATS_URL until SIGTERM."""
    settings = GatewaySettings()
    run_service("gateway", settings, lambda: GatewayComponent(settings), front=api_front)


if __name__ == "__main__":
    main()
