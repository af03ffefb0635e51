"""`helpline-scraper` (or `python -m helpline.scraper`): the scraper service alone in this process."""

from __future__ import annotations

from helpline.common.serving import run_service
from helpline.scraper.app import ScraperComponent
from helpline.scraper.settings import ScraperSettings


def main() -> None:
    """Fetch and chunk pages and crawl sites, against the NATS server in HELPLINE_NATS_URL, until SIGTERM."""
    settings = ScraperSettings()
    run_service("scraper", settings, lambda: ScraperComponent(settings))


if __name__ == "__main__":
    main()
