"""Submitting work: scrape, batch, crawl, embed. Each waits for its task by default (a
progress bar on stderr, then a summary line) and exits by how it ended."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from helpline.cli.client import ExitCode, Gateway, fail
from helpline.cli.commands.options import (
    Exclude,
    Include,
    MaxDepth,
    MaxPages,
    Render,
    request_body,
)
from helpline.cli.commands.tasks import submitted
from helpline.cli.output import JsonFlag

Brand = Annotated[str, typer.Option(help="Whose documentation this is.")]
Priority = Annotated[
    str | None, typer.Option(help="critical, high, normal or low (default: the API's).")
]
Wait = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait",
        help="Follow the task to its end and exit by its outcome, or print its id and return.",
    ),
]


def scrape(
    url: Annotated[str, typer.Argument(help="The page (HTML or PDF).")],
    brand: Brand,
    priority: Priority = None,
    render: Render = None,
    wait: Wait = True,
    as_json: JsonFlag = False,
) -> None:
    """Scrape and index one page."""
    with Gateway.from_settings() as gateway:
        body = request_body(url=url, brand=brand, priority=priority, render=render)
        submitted(gateway, gateway.post("/scrape", body), wait=wait, as_json=as_json)


def batch(
    brand: Brand,
    urls: Annotated[
        list[str] | None, typer.Argument(help="The pages; or --file, or both.", show_default=False)
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(help="A file of URLs, one a line (`-`: standard input).", allow_dash=True),
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Pages fetched at once, across replicas (default 5).")
    ] = None,
    delay_ms: Annotated[
        int | None, typer.Option(help="Least time between two fetches' starts.")
    ] = None,
    priority: Priority = None,
    render: Render = None,
    wait: Wait = True,
    as_json: JsonFlag = False,
) -> None:
    """Index a list of pages as one task, with a progress bar."""
    listed = list(urls or [])
    if file is not None:
        lines = sys.stdin.read() if str(file) == "-" else _read(file)
        listed += [line.strip() for line in lines.splitlines() if line.strip()]
    if not listed:
        fail(ExitCode.BAD_INPUT, "no URLs: give them as arguments or with --file")
    body = request_body(
        urls=listed,
        brand=brand,
        max_concurrent=max_concurrent,
        delay_ms=delay_ms,
        priority=priority,
        render=render,
    )
    with Gateway.from_settings() as gateway:
        submitted(gateway, gateway.post("/scrape/batch", body), wait=wait, as_json=as_json)


def crawl(
    url: Annotated[str, typer.Argument(help="The start page.")],
    brand: Brand,
    max_pages: MaxPages = None,
    max_depth: MaxDepth = None,
    include: Include = None,
    exclude: Exclude = None,
    priority: Priority = None,
    render: Render = None,
    wait: Wait = True,
    as_json: JsonFlag = False,
) -> None:
    """Crawl a documentation site, with a progress bar of its pages."""
    body = request_body(
        url=url,
        brand=brand,
        max_pages=max_pages,
        max_depth=max_depth,
        include=include,
        exclude=exclude,
        priority=priority,
        render=render,
    )
    with Gateway.from_settings() as gateway:
        submitted(gateway, gateway.post("/crawl", body), wait=wait, as_json=as_json)


def embed(
    brand: Brand,
    text: Annotated[
        str | None, typer.Argument(help="The text; or --file.", show_default=False)
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(help="Read the text from this file (`-`: standard input).", allow_dash=True),
    ] = None,
    title: Annotated[str | None, typer.Option(help="Its title (default: its start).")] = None,
    url: Annotated[str | None, typer.Option(help="Where it lives, cited as its source.")] = None,
    doc_id: Annotated[
        str | None, typer.Option("--id", help="Its id (letters, digits, `_.-`).")
    ] = None,
    priority: Priority = None,
    wait: Wait = True,
    as_json: JsonFlag = False,
) -> None:
    """Index text that is not on a web page (an FAQ entry, a ticket)."""
    if file is not None:
        text = sys.stdin.read() if str(file) == "-" else _read(file)
    if text is None:
        fail(ExitCode.BAD_INPUT, "no text: give it as an argument or with --file")
    document = request_body(id=doc_id, title=title, url=url, text=text, brand=brand)
    with Gateway.from_settings() as gateway:
        body = request_body(documents=[document], priority=priority)
        submitted(gateway, gateway.post("/embed", body), wait=wait, as_json=as_json)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        fail(ExitCode.BAD_INPUT, f"cannot read {path}: {exc.strerror}")
