"""The API's resources as commands: `register` adds them to the `helpline` app."""

from __future__ import annotations

from collections.abc import Callable

import typer

from helpline.cli.commands import ask, ops, submit, tasks
from helpline.cli.commands.documents import documents
from helpline.cli.commands.keys import keys
from helpline.cli.commands.sources import sources
from helpline.cli.commands.webhooks import webhooks

PANELS: dict[str, tuple[Callable[..., None], ...]] = {
    "Work": (submit.scrape, submit.batch, submit.crawl, submit.embed, ask.ask),
    "Tasks": (tasks.task, tasks.tasks, tasks.cancel),
    "Operations": (ops.queues, ops.workers, ops.breakers, ops.status),
}


def register(app: typer.Typer) -> None:
    for panel, commands in PANELS.items():
        for command in commands:
            app.command(rich_help_panel=panel)(command)
    app.add_typer(ops.dlq, name="dlq", rich_help_panel="Operations")
    app.add_typer(ops.cache, name="cache", rich_help_panel="Operations")
    app.add_typer(sources, name="sources", rich_help_panel="Resources")
    app.add_typer(documents, name="documents", rich_help_panel="Resources")
    app.add_typer(keys, name="keys", rich_help_panel="Resources")
    app.add_typer(webhooks, name="webhooks", rich_help_panel="Resources")
