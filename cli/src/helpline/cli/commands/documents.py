"""Documents: the pages in the index, as their last indexing left them: listed, one shown
(lineage, Markdown), one taken out."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markdown import Markdown

from helpline.cli.client import ExitCode, Gateway, fail
from helpline.cli.output import JsonFlag, emit_json, fields, out, table, when

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


@documents.command("show")
def show(
    document_id: Annotated[
        str | None, typer.Argument(help="The document's id; or --url.", show_default=False)
    ] = None,
    url: Annotated[str | None, typer.Option(help="The page's URL instead of its id.")] = None,
    brand: Annotated[
        str | None, typer.Option(help="With --url: whose (when several brands index it).")
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print only the extracted text, as Markdown.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """One indexed page: metadata, lineage (fetched ... indexed) and its text as Markdown."""
    if (document_id is None) == (url is None):
        fail(ExitCode.BAD_INPUT, "give a document id or --url, one of them")
    with Gateway.from_settings() as gateway:
        if url is not None:
            document = gateway.get("/documents/by-url", url=url, brand=brand)
        else:
            document = gateway.get(f"/documents/{document_id}")
    if as_json:
        emit_json(document)
        return
    if markdown:
        sys.stdout.write((document.get("markdown") or "") + "\n")
        return
    fields(
        [
            ("id", document["id"]),
            ("url", document["url"]),
            ("title", document["title"]),
            ("brand", document.get("brand")),
            ("chunks", document["chunks"]),
            ("fetched", when(document.get("fetched_at"))),
            ("indexed", when(document.get("indexed_at"))),
            ("task", document.get("task_id")),
        ]
    )
    if document.get("lineage"):
        out.print()
        table(
            document["lineage"],
            [
                ("step", lambda s: s["step"]),
                ("at", lambda s: when(s["at"], short=True)),
                ("ms", lambda s: f"{s['duration_ms']:.1f}"),
                ("task", lambda s: s["task_id"]),
                ("trace", lambda s: s.get("trace_id")),
            ],
            empty="",
        )
    if document.get("markdown"):
        out.print()
        out.print(Markdown(document["markdown"]))


@documents.command("delete")
def delete(
    document_id: Annotated[str, typer.Argument(help="The document's id.")],
    as_json: JsonFlag = False,
) -> None:
    """Take a page out of the index and out of cached answers (a later crawl may index it
    again); exit 1 if the removal failed."""
    with Gateway.from_settings() as gateway:
        removed = gateway.delete(f"/documents/{document_id}")
    if as_json:
        emit_json(removed)
    elif removed["status"] == "pending":
        task_id = removed["task_id"]
        out.print(f"removing {removed['url']}: follow it with helpline task {task_id} --wait")
    else:
        out.print(f"{removed['status']} {removed['url']}: {removed['chunks_removed']} chunks")
    if removed["status"] == "failed":
        raise typer.Exit(int(ExitCode.FAILED))
