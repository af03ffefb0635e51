"""`helpline-embedder` (or `python -m helpline.embedder`): the embedder service alone in this process."""

from __future__ import annotations

from helpline.common.serving import run_service
from helpline.embedder.app import EmbedderComponent
from helpline.embedder.settings import EmbedderSettings


def main() -> None:
    """Embed chunks into the vector store, against the NATS server in HELPLINE_NATS_URL, until SIGTERM."""
    settings = EmbedderSettings()
    run_service("embedder", settings, lambda: EmbedderComponent(settings))


if __name__ == "__main__":
    main()
