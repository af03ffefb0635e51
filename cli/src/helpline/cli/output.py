"""What the commands print: the API's JSON for scripts (`--json`), tables for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# Lines are never broken at the terminal's width: a script may grep them whole.
out = Console(highlight=False, soft_wrap=True)
#: The least width the last column of a table gets before the table outgrows the terminal.
LAST_COLUMN_MIN = 30

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the API's JSON as it answered (for scripts).")
]

#: A column: its heading and how a row gives its cell.
Column = tuple[str, Callable[[dict[str, Any]], Any]]


def emit_json(data: Any) -> None:
    """The API's JSON on stdout, whole, never wrapped to the terminal's width."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def text(value: Any) -> str:
    """A value as a cell shows it: nothing for None, lists joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def when(value: str | None, *, short: bool = False) -> str:
    """An API time (ISO 8601, UTC) as `2026-12-05 17:07:47` (`short`: `12-05 17:07:47`)."""
    if not value:
        return ""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    return at.strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], *, empty: str) -> None:
    """`rows` as a table, or `empty` in grey when there are none. Only the last column wraps
    (an error, a title); ids and the other short columns are never cut, even if that makes
    the table wider than a narrow terminal."""
    if not rows:
        out.print(f"[dim]{escape(empty)}[/]")
        return
    cells = [[text(cell(row)) for _, cell in columns] for row in rows]
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for n, (heading, _) in enumerate(columns, 1):
        grid.add_column(heading, no_wrap=n < len(columns), overflow="fold")
    for row_cells in cells:
        grid.add_row(*(Text(c) for c in row_cells))
    widths = [
        max(len(heading), *(len(row_cells[n]) for row_cells in cells))
        for n, (heading, _) in enumerate(columns)
    ]
    needed = sum(widths[:-1]) + 3 * (len(widths) - 1) + min(widths[-1], LAST_COLUMN_MIN)
    # Wider than the terminal if it must (the terminal folds the lines): never an id cut.
    width = out.width
    out.width = max(width, needed)
    try:
        out.print(grid)
    finally:
        out.width = width


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """Name and value, one a line; values that are None left out."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in pairs:
        if value is None or value == "" or value == []:
            continue
        grid.add_row(name, Text(json.dumps(value) if isinstance(value, dict) else text(value)))
    out.print(grid)
