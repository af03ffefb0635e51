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
    """Back up the index and the buckets that hold state (helpline up running or not).

    HELPLINE_DATA_DIR's (while helpline up runs on it, up takes it: a consistent backup, crawls
    going on), or those HELPLINE_NATS_URL and HELPLINE_QDRANT_URL name.
    Exit 2 when refused: FOLDER is not empty, or the data dir is held by something else.
    """
    from helpline.cli.backup import Refused, backup_running, running_url
    from helpline.cli.backup import backup as run_backup
    from helpline.common.settings import HelplineSettings, StoreSettings

    settings = HelplineSettings()
    try:
        live = None if settings.nats_url else running_url(Path(settings.data_dir))
        if live is not None:
            summary = backup_running(folder, settings, live, with_tasks=with_tasks)
        else:
            summary = run_backup(folder, settings, StoreSettings(), with_tasks=with_tasks)
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
    """Restore a backup (into a stopped data dir, or a deployment).

    Into HELPLINE_DATA_DIR, or the one HELPLINE_NATS_URL and HELPLINE_QDRANT_URL name.
    Checksums and the format version are checked first.
    Exit 2 when refused: a target that holds data (without --force), a changed file,
    another format version, or helpline up running on the data dir.
    """
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
