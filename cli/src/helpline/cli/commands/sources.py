"""Sources: sites crawled again every `refresh_s` by the maintenance service."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from helpline.cli.client import Gateway
from helpline.cli.commands.options import (
    Exclude,
    Include,
    MaxDepth,
    MaxPages,
    Render,
    request_body,
)
from helpline.cli.output import JsonFlag, emit_json, fields, out, seconds, table, when

sources = typer.Typer(help="Sites crawled again and again, on a schedule.")

SourceId = Annotated[str, typer.Argument(help="The source's id.")]
RefreshS = Annotated[
    int | None, typer.Option(help="Seconds between two crawls (at least the gateway's floor).")
]


def _last(source: dict[str, Any]) -> str:
    last = source.get("last_crawl")
    if not last:
        return ""
    counts = "" if last.get("pages_ok") is None else f" ({last['pages_ok']} pages)"
    return f"{last.get('status') or 'gone'}{counts} {when(last.get('started_at'))}"


def _show(source: dict[str, Any]) -> None:
    last = source.get("last_crawl") or {}
    fields(
        [
            ("id", source["id"]),
            ("url", source["url"]),
            ("brand", source["brand"]),
            ("every", seconds(source["refresh_s"])),
            ("max pages", source["max_pages"]),
            ("max depth", source["max_depth"]),
            ("include", source["include"]),
            ("exclude", source["exclude"]),
            ("render", source["render"]),
            ("next due", when(source["next_due"])),
            ("last crawl", _last(source) or None),
            ("last task", last.get("task_id")),
        ]
    )


@sources.command("list")
def list_sources(
    brand: Annotated[str | None, typer.Option(help="Only this brand's.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every source, oldest first, with its next crawl and how the last one went."""
    with Gateway.from_settings() as gateway:
        page = gateway.get("/sources", brand=brand)
    if as_json:
        emit_json(page)
        return
    table(
        page["items"],
        [
            ("id", lambda s: s["id"]),
            ("url", lambda s: s["url"]),
            ("brand", lambda s: s["brand"]),
            ("every", lambda s: seconds(s["refresh_s"])),
            ("next due", lambda s: when(s["next_due"], short=True)),
            ("last crawl", _last),
        ],
        empty="no sources",
    )


@sources.command("show")
def show(source_id: SourceId, as_json: JsonFlag = False) -> None:
    """One source, with its last crawl."""
    with Gateway.from_settings() as gateway:
        source = gateway.get(f"/sources/{source_id}")
    if as_json:
        emit_json(source)
    else:
        _show(source)


@sources.command("add")
def add(
    url: Annotated[str, typer.Argument(help="The start page.")],
    brand: Annotated[str, typer.Option(help="Whose documentation this is.")],
    refresh_s: Annotated[
        int, typer.Option(help="Seconds between two crawls (at least the gateway's floor).")
    ],
    max_pages: MaxPages = None,
    max_depth: MaxDepth = None,
    include: Include = None,
    exclude: Exclude = None,
    render: Render = None,
    as_json: JsonFlag = False,
) -> None:
    """Crawl a site now and again every --refresh-s seconds, at low priority."""
    body = request_body(
        url=url,
        brand=brand,
        refresh_s=refresh_s,
        max_pages=max_pages,
        max_depth=max_depth,
        include=include,
        exclude=exclude,
        render=render,
    )
    with Gateway.from_settings() as gateway:
        source = gateway.post("/sources", body)
    if as_json:
        emit_json(source)
    else:
        _show(source)


@sources.command("update")
def update(
    source_id: SourceId,
    refresh_s: RefreshS = None,
    max_pages: MaxPages = None,
    max_depth: MaxDepth = None,
    include: Include = None,
    exclude: Exclude = None,
    render: Render = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a source's refresh or crawl options (those given; the rest stay)."""
    body = request_body(
        refresh_s=refresh_s,
        max_pages=max_pages,
        max_depth=max_depth,
        include=include,
        exclude=exclude,
        render=render,
    )
    with Gateway.from_settings() as gateway:
        source = gateway.patch(f"/sources/{source_id}", body)
    if as_json:
        emit_json(source)
    else:
        _show(source)


@sources.command("delete")
def delete(
    source_id: SourceId,
    keep_documents: Annotated[
        bool,
        typer.Option("--keep-documents", help="Leave its pages in the index (only stop crawling)."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Stop crawling a source and take its pages (its brand's under its URL) out of the index,
    unless --keep-documents."""
    with Gateway.from_settings() as gateway:
        deleted = gateway.call(
            "DELETE",
            f"/sources/{source_id}",
            params={"keep_documents": "true" if keep_documents else None},
        )
    deleted = deleted or {"id": source_id}  # a gateway before pages went with their source
    if as_json:
        emit_json(deleted)
        return
    line = f"deleted source {source_id}"
    if "documents_removed" in deleted:
        line += (
            f": {deleted['documents_removed']} documents ({deleted['chunks_removed']} chunks) "
            f"out of the index, {deleted['documents_kept']} kept"
        )
    out.print(line)
    for task_id in deleted.get("pending") or []:
        out.print(f"  still removing: helpline task {task_id} --wait")
