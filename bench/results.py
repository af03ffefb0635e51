"""Every bench run kept: a dated entry in bench/results/<bench>.md with the figures it printed.

A bench starts a capture just before it prints its final figures and saves it after them:

    from results import capture

    printed = capture("priority")
    print(...)  # echoed as usual, and kept
    printed.save()

`save` adds an entry right below the results file's fixed header (newest first): the UTC
date and time, the command line, the machine's cores, CPU model and load average, the
commit, the HELPLINE_* settings from the environment (secrets left out), and the printed
figures in a fenced block. The header, and the notes under it, are written by hand.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

RESULTS = Path(__file__).resolve().parent / "results"
#: Entries go right below this line, newest first.
MARKER = "<!-- bench/results.py adds each run below this line, newest first -->"
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


class _Tee:
    """A stdout that writes through and keeps a copy."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class Capture:
    """What the bench prints from now until `save()`, for its results file."""

    def __init__(self, bench: str, results_dir: Path = RESULTS) -> None:
        self.bench = bench
        self.results_dir = results_dir
        self._tee = _Tee(sys.stdout)
        sys.stdout = self._tee  # type: ignore[assignment]

    @property
    def text(self) -> str:
        return "".join(self._tee.parts)

    def save(self) -> Path:
        """Stop capturing and add the entry; returns the results file's path."""
        if sys.stdout is self._tee:
            sys.stdout = self._tee.stream
        sys.stdout.flush()
        path = record(self.bench, self.text, results_dir=self.results_dir)
        print(f"figures recorded in {_shown(path)}")
        return path


def capture(bench: str, results_dir: Path = RESULTS) -> Capture:
    """Start keeping what `bench` prints; call `.save()` once its figures are printed."""
    return Capture(bench, results_dir)


def record(
    bench: str,
    figures: str,
    *,
    results_dir: Path = RESULTS,
    argv: list[str] | None = None,
    now: datetime | None = None,
) -> Path:
    """Add a dated entry holding `figures` to results_dir/<bench>.md, below its header."""
    path = results_dir / f"{bench}.md"
    text = path.read_text(encoding="utf-8") if path.exists() else _default_header(bench)
    if MARKER not in text:
        text = text.rstrip("\n") + f"\n\n## Runs\n\n{MARKER}\n"
    head, _, older = text.partition(MARKER)
    entry = entry_text(figures, argv=argv, now=now)
    older = older.strip("\n")
    body = f"{head}{MARKER}\n\n{entry}" + (f"\n{older}\n" if older else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(body, encoding="utf-8")
    partial.replace(path)
    return path


def entry_text(figures: str, *, argv: list[str] | None = None, now: datetime | None = None) -> str:
    """One run's entry: a heading with the date and command, the machine, the figures."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    lines = [
        f"### {when:%Y-%m-%d %H:%M} UTC: `{command_line(argv)}`",
        "",
        f"- machine: {machine()}",
    ]
    commit = _commit()
    if commit:
        lines.append(f"- commit: {commit}")
    settings = [
        f"{k}={v}"
        for k, v in sorted(os.environ.items())
        if k.startswith("HELPLINE_") and not any(word in k for word in _SECRET_WORDS)
    ]
    if settings:
        lines.append("- settings: " + ", ".join(f"`{s}`" for s in settings))
    body = "\n".join(line.rstrip() for line in figures.strip("\n").splitlines())
    fence = "```"
    while fence in body:
        fence += "`"
    lines += ["", f"{fence}text", body, fence, ""]
    return "\n".join(lines)


def command_line(argv: list[str] | None = None) -> str:
    """The command as it was run (the interpreter by its name, not its path)."""
    args = list(argv if argv is not None else getattr(sys, "orig_argv", sys.argv))
    if args and Path(args[0]).name.startswith("python"):
        args[0] = "python"
    return shlex.join(args)


def machine() -> str:
    """Cores (and those this process may use), CPU model, load average now."""
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    parts = [f"{cores} cores" + (f" ({usable} usable)" if usable != cores else "")]
    model = _cpu_model()
    if model:
        parts.append(model)
    if hasattr(os, "getloadavg"):
        parts.append("load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    return "; ".join(parts)


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return " ".join(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def _commit() -> str | None:
    """The checkout's commit, marked when tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head} (with uncommitted changes)" if dirty else head


def _default_header(bench: str) -> str:
    return (
        f"# bench/{bench}.py results\n\n"
        f"What `bench/{bench}.py` printed, one entry per run.\n\n## Runs\n\n{MARKER}\n"
    )


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
