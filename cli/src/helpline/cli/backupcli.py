"""`helpline backup` and `helpline restore`: the commands over `helpline.cli.backup`, which is
imported only when one runs (it loads the vector store's client)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)


def backup(
    folder: Annotated[Path, typer.Argument(help="A new (or empty) folder to write it to.")],
    with_tasks: Annotated[
        bool, typer.Option("--with-tasks", help="Keep finished task records too.")
    ] = False,
) -> None:
    """Back up HELPLINE_DATA_DIR (the vector index and the buckets that hold state) while
    helpline up is stopped. Exit 2 when refused (up running, a folder not empty)."""
    from helpline.cli.backup import Refused
    from helpline.cli.backup import backup as run_backup
    from helpline.common.settings import HelplineSettings, StoreSettings

    try:
        summary = run_backup(folder, HelplineSettings(), StoreSettings(), with_tasks=with_tasks)
    except Refused as exc:
        err.print(f"[red]refused[/]: {escape(str(exc))}")
        raise typer.Exit(2) from None
    typer.echo(summary.line("backed up to"))


def restore(
    folder: Annotated[Path, typer.Argument(help="A folder `helpline backup` wrote.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace what the target already holds.")
    ] = False,
    qdrant_url: Annotated[
        str | None,
        typer.Option(
            "--qdrant-url",
            help="Restore the points into this Qdrant server (default HELPLINE_QDRANT_URL; "
            "unset: Qdrant Edge in HELPLINE_DATA_DIR).",
        ),
    ] = None,
) -> None:
    """Restore a backup into HELPLINE_DATA_DIR (stopped): checksums and format checked, an
    existing deployment kept unless --force. Exit 2 when refused."""
    from helpline.cli.backup import Refused
    from helpline.cli.backup import restore as run_restore
    from helpline.common.settings import HelplineSettings, StoreSettings

    store = StoreSettings()
    if qdrant_url:
        store = store.model_copy(update={"qdrant_url": qdrant_url})
    try:
        summary = run_restore(folder, HelplineSettings(), store, force=force)
    except Refused as exc:
        err.print(f"[red]refused[/]: {escape(str(exc))}")
        raise typer.Exit(2) from None
    typer.echo(summary.line("restored from"))
