"""Tasks: one task (and waiting for it), the list, cancelling; how a finished task is told."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from helpline.cli.client import ExitCode, Gateway, err
from helpline.cli.output import JsonFlag, emit_json, fields, out, table, text, when
from helpline.common.records import TERMINAL_STATUSES

POLL_S = 0.3
#: The failed children a parent's summary names.
FAILED_SHOWN = 10


def follow(gateway: Gateway, task_id: str, *, quiet: bool) -> dict[str, Any]:
    """Poll the task until it ends; unless `quiet`, with a progress bar on stderr. Ctrl-C
    stops waiting, not the task."""
    try:
        if quiet:
            return _poll(gateway, task_id, lambda record: None)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err) as bar:
            job = bar.add_task("queued", total=None)

            def show(record: dict[str, Any]) -> None:
                progress = record.get("progress") or {}
                bar.update(
                    job,
                    completed=progress.get("done", 0),
                    total=progress.get("total") or None,
                    description=f"{record['kind']} {record['status']}",
                )

            return _poll(gateway, task_id, show)
    except KeyboardInterrupt:
        err.print(f"stopped waiting; the task goes on: helpline task {task_id} --wait")
        raise typer.Exit(130) from None


def _poll(gateway: Gateway, task_id: str, show: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    while True:
        record: dict[str, Any] = gateway.get(f"/tasks/{task_id}")
        show(record)
        if record["status"] in TERMINAL_STATUSES:
            return record
        time.sleep(POLL_S)


def outcome(record: dict[str, Any]) -> ExitCode:
    """0 for a task that succeeded; 1 for one that did not, or a parent none of whose pages
    were indexed."""
    if record["status"] != "succeeded":
        return ExitCode.FAILED
    result = record.get("result") or {}
    if result.get("pages_failed") and not result.get("pages_ok"):
        return ExitCode.FAILED
    return ExitCode.OK


def summary(record: dict[str, Any]) -> str:
    """One line: how the task ended, what it did, how long it took."""
    status, result = record["status"], record.get("result") or {}
    line = f"{record['kind']} {record['task_id']} {status}"
    if "pages_ok" in result:
        unit = "documents" if record["kind"] == "embed" else "pages"
        line += (
            f": {result['pages_ok']} {unit} indexed, {result.get('pages_failed', 0)} failed, "
            f"{result.get('chunks_indexed', 0)} chunks"
        )
    elif "chunks_indexed" in result:
        line += f": {result['chunks_indexed']} chunks"
        changes = [f"{result[k]} {k}" for k in ("new", "changed", "removed") if result.get(k)]
        if changes:
            line += f" ({', '.join(changes)})"
        if result.get("not_modified"):
            line += " (not modified)"
    error = record.get("error")
    if error:
        line += f": {error['type']}: {error['message']}"
    took = _duration_s(record)
    if took is not None:
        line += f" in {took:.1f} s"
    return line


def _duration_s(record: dict[str, Any]) -> float | None:
    if not record.get("finished_at") or not record.get("created_at"):
        return None
    finished = datetime.fromisoformat(record["finished_at"])
    return (finished - datetime.fromisoformat(record["created_at"])).total_seconds()


def failed_children(gateway: Gateway, record: dict[str, Any]) -> list[dict[str, Any]]:
    """A parent's children that failed, with their reasons (a gateway without the `parent`
    filter ignores it: then among the 1,000 newest failed tasks)."""
    parent = record["task_id"]
    failed: list[dict[str, Any]] = gateway.get("/tasks", parent=parent, status="failed", limit=1000)
    return [t for t in failed if t.get("parent_id") == parent]


def report(gateway: Gateway, record: dict[str, Any], *, as_json: bool) -> None:
    """A finished task: its record (`as_json`), or its summary and failed pages; then exit."""
    if as_json:
        emit_json(record)
    else:
        out.print(summary(record), markup=False)
        if (record.get("result") or {}).get("pages_failed"):
            _print_failed(failed_children(gateway, record))
    raise typer.Exit(int(outcome(record)))


def _print_failed(children: list[dict[str, Any]]) -> None:
    for child in children[:FAILED_SHOWN]:
        error = child.get("error") or {}
        out.print(f"  [red]failed[/] {child['task_id']}: {escape(text(error.get('message')))}")
    if len(children) > FAILED_SHOWN:
        out.print(f"  [dim]and {len(children) - FAILED_SHOWN} more[/]")


def submitted(gateway: Gateway, accepted: dict[str, Any], *, wait: bool, as_json: bool) -> None:
    """After a 202: wait for the task and report it, or say where to follow it."""
    if wait:
        report(gateway, follow(gateway, accepted["task_id"], quiet=as_json), as_json=as_json)
    if as_json:
        emit_json(accepted)
    else:
        task_id = accepted["task_id"]
        out.print(f"queued {task_id} (follow it: helpline task {task_id} --wait)")


def task(
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow it until it ends; exit 1 if it failed.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show one task: status, progress, result, error (and a parent's failed pages)."""
    with Gateway.from_settings() as gateway:
        if wait:
            report(gateway, follow(gateway, task_id, quiet=as_json), as_json=as_json)
        record = gateway.get(f"/tasks/{task_id}")
        if as_json:
            emit_json(record)
            return
        progress = record.get("progress")
        error = record.get("error")
        fields(
            [
                ("task", record["task_id"]),
                ("kind", record["kind"]),
                ("status", record["status"]),
                ("brand", record.get("brand")),
                ("priority", record.get("priority")),
                ("attempts", record.get("attempts")),
                ("progress", f"{progress['done']}/{progress['total']}" if progress else None),
                ("parent", record.get("parent_id")),
                ("created", when(record.get("created_at"))),
                ("started", when(record.get("started_at"))),
                ("finished", when(record.get("finished_at"))),
                ("result", record.get("result")),
                ("error", f"{error['type']}: {error['message']}" if error else None),
                ("trace", record.get("trace_id")),
            ]
        )
        if (record.get("result") or {}).get("pages_failed"):
            _print_failed(failed_children(gateway, record))


def tasks(
    kind: Annotated[str | None, typer.Option(help="crawl, scrape, embed, query, ...")] = None,
    status: Annotated[
        str | None,
        typer.Option(help="queued, running, retrying, succeeded, failed, expired, cancelled"),
    ] = None,
    brand: Annotated[str | None, typer.Option(help="Only this brand's.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first (1-1000).")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List tasks, newest first."""
    with Gateway.from_settings() as gateway:
        rows = gateway.get("/tasks", kind=kind, status=status, brand=brand, limit=limit)
    if as_json:
        emit_json(rows)
        return
    table(
        rows,
        [
            ("task", lambda r: r["task_id"]),
            ("kind", lambda r: r["kind"]),
            ("status", lambda r: r["status"]),
            ("brand", lambda r: r.get("brand")),
            ("progress", _progress),
            ("created", lambda r: when(r.get("created_at"), short=True)),
            ("error", lambda r: (r.get("error") or {}).get("message")),
        ],
        empty="no tasks",
    )


def _progress(record: dict[str, Any]) -> str | None:
    progress = record.get("progress")
    return f"{progress['done']}/{progress['total']}" if progress else None


def cancel(
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    as_json: JsonFlag = False,
) -> None:
    """Cancel a task that has not finished (a parent: its unfinished children too)."""
    with Gateway.from_settings() as gateway:
        record = gateway.delete(f"/tasks/{task_id}")
    if as_json:
        emit_json(record)
    else:
        out.print(f"{record['task_id']} {record['status']}")
