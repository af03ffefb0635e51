"""Documents: the pages in the index, as their last indexing left them."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from helpline.cli.client import Gateway
from helpline.cli.output import JsonFlag, emit_json, out, table, when

documents = typer.Typer(help="The pages in the index.")


@documents.command("list")
def list_documents(
    brand: Annotated[str | None, typer.Option(help="Only this brand's.")] = None,
    source: Annotated[
        str | None, typer.Option(help="Only a source's (its brand's pages under its URL).")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many (1-1000), by URL.")] = 100,
    cursor: Annotated[
        str | None, typer.Option(help="Where the previous page ended (its next_cursor).")
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every page of the listing, not just one.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Indexed pages by URL: title, brand, chunks, when indexed."""
    items: list[dict[str, Any]] = []
    with Gateway.from_settings() as gateway:
        while True:
            page = gateway.get("/documents", brand=brand, source=source, limit=limit, cursor=cursor)
            items += page["items"]
            cursor = page["next_cursor"]
            if not every or cursor is None:
                break
    if as_json:
        emit_json({"items": items, "next_cursor": cursor})
        return
    table(
        items,
        [
            ("url", lambda d: d["url"]),
            ("title", lambda d: d["title"]),
            ("brand", lambda d: d.get("brand")),
            ("chunks", lambda d: d["chunks"]),
            ("indexed", lambda d: when(d.get("indexed_at"), short=True)),
        ],
        empty="no documents",
    )
    if cursor:
        out.print(f"[dim]more: --cursor {cursor} (or --all)[/]")
