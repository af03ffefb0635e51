"""Options more than one command takes (a crawl's, for `crawl` and `sources`), and the
request body made of those a user gave."""

from __future__ import annotations

from typing import Annotated, Any

import typer

MaxPages = Annotated[int | None, typer.Option(help="Most pages a crawl indexes (default 100).")]
MaxDepth = Annotated[int | None, typer.Option(help="Most links from the start page (default 3).")]
Include = Annotated[list[str] | None, typer.Option(help="A path glob to follow (repeatable).")]
Exclude = Annotated[list[str] | None, typer.Option(help="A path glob to skip (repeatable).")]
Render = Annotated[
    str | None,
    typer.Option(help="Browser rendering: auto (the API's default), always or never."),
]


def request_body(**fields: Any) -> dict[str, Any]:
    """The request body: options left unset (None, or a repeatable one not given) are left
    out, so the API's defaults apply."""
    return {k: v for k, v in fields.items() if v is not None and v != []}
