"""The `helpline` command."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from helpline.cli import backupcli
from helpline.cli.client import EXIT_CODES_HELP
from helpline.cli.commands import register
from helpline.cli.settings import CliSettings

app = typer.Typer(
    help="Helpline: crawl product documentation and answer questions with cited sources.",
    epilog=EXIT_CODES_HELP,
)
err = Console(stderr=True)


@app.command()
def up() -> None:
    """Run the whole system here: nats-server, Qdrant Edge, the workers and the gateway."""
    from helpline.cli.runner import up as run_up

    run_up(CliSettings())


@app.command()
def run(
    service: Annotated[str, typer.Argument(help="gateway, scraper, embedder, rag or maintenance")],
) -> None:
    """Run one service in this process (needs HELPLINE_NATS_URL)."""
    from helpline.cli.runner import SERVICES
    from helpline.cli.runner import run as run_one

    if service not in SERVICES:
        err.print(f"[red]unknown service {service!r}[/]; one of: {', '.join(SERVICES)}")
        raise typer.Exit(2)
    run_one(service)


register(app)
app.command(rich_help_panel="Data")(backupcli.backup)
app.command(rich_help_panel="Data")(backupcli.restore)


if __name__ == "__main__":
    app()
