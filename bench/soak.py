"""The soak: thirty minutes (`--minutes`) of mixed load against the real `helpline up` and a
local site, every process's resident memory sampled every 10 s and plotted.

The load (`helpline.testing.soak`): distinct questions four a second (a third of them
allowed the answer cache), a crawl at the start, a batch of pages every 30 s, and a source
re-crawled by the maintenance schedule every minute. Goals: no growth after the warm-up
(under 5%, from `--warmup-minutes` to the end), no task lost, no error in the logs.

    uv run python bench/soak.py [--minutes 30] [--warmup-minutes 5] [--site DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from results import capture

from helpline.testing import HelplineUp, serve_site
from helpline.testing.soak import SoakResult, soak

SITE = Path(__file__).parent.parent / "tests" / "site"


def plot(result: SoakResult, warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    names = sorted({n for _, sample in result.samples for n in sample})
    for name in names:
        points = [(t / 60, s[name] / 2**20) for t, s in result.samples if name in s]
        axes.plot([p[0] for p in points], [p[1] for p in points], label=name)
    axes.axvline(warmup_s / 60, color="grey", linestyle="--", label="end of warm-up")
    axes.set_xlabel("minutes")
    axes.set_ylabel("RSS (MiB)")
    axes.set_ylim(bottom=0)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup-minutes", type=float, default=5)
    parser.add_argument("--site", type=Path, default=SITE)
    parser.add_argument("--plot", type=Path, default=Path(__file__).parent / "results" / "soak.png")
    args = parser.parse_args()
    env = {"HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1", "HELPLINE_MIN_REFRESH_S": "60"}
    with (
        tempfile.TemporaryDirectory(prefix="helpline-soak-") as tmp,
        serve_site(args.site) as site,
        HelplineUp(Path(tmp) / "up", env) as up,
    ):
        result = soak(up, site, args.minutes * 60, refresh_s=60)
    warmup_s = args.warmup_minutes * 60
    printed = capture("soak")
    print(
        f"{args.minutes:g} minutes: {result.questions} questions ({result.question_failures} "
        f"failed), {len(result.accepted)} crawls and batches accepted {result.statuses}, "
        f"{len(result.unfinished)} unfinished, {result.source_crawls} scheduled re-crawls, "
        f"{len(result.error_lines)} error lines in the logs"
    )
    print(f"RSS, MiB, at the end of the warm-up ({args.warmup_minutes:g} min) and at the end:")
    for name in sorted(result.samples[-1][1]):
        after = [s[name] for t, s in result.samples if t >= warmup_s and name in s]
        print(
            f"  {name:>12}: {after[0] / 2**20:.0f} -> {after[-1] / 2**20:.0f} "
            f"({result.growth(name, warmup_s):+.1%}; peak {max(after) / 2**20:.0f})"
        )
    for line in result.error_lines[:10]:
        print(f"  error: {line[:200]}")
    plot(result, warmup_s, args.plot)
    print(f"plot: {args.plot}")
    printed.save()


if __name__ == "__main__":
    main()
