"""A minute of the soak in CI (`bench/soak.py` runs thirty): questions at a steady rate,
a crawl, batches and a scheduled re-crawl against the real `helpline up` and a local site.
No task lost, every one succeeded, no question failed, no error in the logs, memory after
the warm-up within bounds (printed per process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpline.testing import HelplineUp, serve_site
from helpline.testing.soak import soak

pytestmark = pytest.mark.slow

SITE = Path(__file__).parent.parent / "site"
DURATION_S = 60.0
WARMUP_S = 30.0


@pytest.fixture
def site() -> Iterator[str]:
    with serve_site(SITE) as url:
        yield url


def test_a_minute_of_mixed_load(tmp_path: Path, site: str) -> None:
    env = {
        "HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1",
        "HELPLINE_MIN_REFRESH_S": "20",
    }
    with HelplineUp(tmp_path / "up", env) as up:
        result = soak(up, site, DURATION_S, batch_every_s=15, refresh_s=20)
    growth = {name: result.growth(name, WARMUP_S) for name in result.samples[-1][1]}
    print(
        f"SOAK {DURATION_S:.0f}s questions={result.questions} failed={result.question_failures} "
        f"tasks={len(result.accepted)} {result.statuses} scheduled_crawls={result.source_crawls} "
        f"rss_mb={ {n: round(r / 2**20) for n, r in result.samples[-1][1].items()} } "
        f"growth_after_warmup={ {n: f'{g:+.1%}' for n, g in growth.items()} }"
    )
    assert result.unfinished == []
    assert result.statuses == {"succeeded": len(result.accepted)}
    assert result.questions > 100
    assert result.question_failures == 0
    assert result.source_crawls >= 2  # the schedule re-crawled the source on its own
    assert result.error_lines == [], result.error_lines[:5]
    assert {"helpline up", "gateway", "nats-server"} <= set(growth)
    # A minute cannot show a slow leak (bench/soak.py's thirty can); a fast one, yes.
    assert growth["helpline up"] < 0.3, growth
    assert growth["gateway"] < 0.3, growth
    # nats-server's memory follows its stores (records, request log, traces: all bounded),
    # which fill during the first minutes.
    assert growth["nats-server"] < 0.6, growth
