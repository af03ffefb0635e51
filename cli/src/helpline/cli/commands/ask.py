"""Asking: the answer streamed as it is written (server-sent events), then its numbered
sources."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from helpline.cli.client import ExitCode, Gateway, err, fail
from helpline.cli.output import JsonFlag, emit_json, out


def ask(
    question: Annotated[str, typer.Argument(help="The customer's question.")],
    brand: Annotated[str | None, typer.Option(help="Only this brand's documentation.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Most sources (1-20, default 5).")] = None,
    cache: Annotated[
        bool, typer.Option("--cache/--no-cache", help="Use the answer cache, or ask afresh.")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Ask a question: the answer streams in, then the numbered sources it cites."""
    body: dict[str, Any] = {"question": question, "cache": cache}
    if brand is not None:
        body["brand"] = brand
    if top_k is not None:
        body["top_k"] = top_k
    with Gateway.from_settings() as gateway:
        if as_json:
            emit_json(gateway.post("/query", body))
            return
        sources: list[dict[str, Any]] = []
        done: dict[str, Any] = {}
        for event, data in gateway.events("/query", {**body, "stream": True}):
            if event == "sources":
                sources = data["sources"]
            elif event == "delta":
                sys.stdout.write(data["text"])
                sys.stdout.flush()
            elif event == "reset":
                sys.stdout.write("\n")
                err.print("[yellow]the model failed part-way; the quoted answer follows[/]")
            elif event == "error":
                sys.stdout.write("\n")
                status = int(data.get("status") or 500)
                code = ExitCode.BAD_INPUT if 400 <= status < 500 else ExitCode.FAILED
                fail(code, f"{status} {data.get('detail')}")
            elif event == "done":
                done = data
    sys.stdout.write("\n\n")
    for n, source in enumerate(sources, 1):
        out.print(f"[bold]{escape(f'[{n}]')}[/] {escape(source['title'])}")
        out.print(f"    {escape(source['url'])}  [dim]score {source['score']:.3f}[/]")
    meta = [f"{done.get('duration_ms', 0):.0f} ms", str(done.get("answer_mode", ""))]
    if done.get("cached"):
        meta.append("cached")
    if done.get("fallback_reason"):
        meta.append(f"fallback: {done['fallback_reason']}")
    out.print(f"[dim]{escape(' · '.join(m for m in meta if m))}[/]")
