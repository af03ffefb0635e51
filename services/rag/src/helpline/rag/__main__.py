"""`helpline-rag` (or `python -m helpline.rag`): the rag service alone in this process."""

from __future__ import annotations

from helpline.common.serving import run_service
from helpline.rag.app import RagComponent
from helpline.rag.settings import RagSettings


def main() -> None:
    """Answer questions, against the NATS server in HELPLINE_NATS_URL, until SIGTERM."""
    settings = RagSettings()
    run_service("rag", settings, lambda: RagComponent(settings))


if __name__ == "__main__":
    main()
