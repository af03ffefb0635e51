"""The `helpline` command."""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from helpline.cli.adminkey import read_admin_key
from helpline.cli.settings import CliSettings
from helpline.common.records import TERMINAL_STATUSES

app = typer.Typer(
    help="Helpline: crawl product documentation and answer questions with cited sources."
)
console = Console()
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


def _client() -> httpx.Client:
    settings = CliSettings()
    key = (settings.api_key.get_secret_value() if settings.api_key else None) or read_admin_key(
        settings.data_dir
    )
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=settings.gateway_url, timeout=30.0, headers=headers)


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text}
        detail = body.get("detail")
        for e in body.get("errors", []):
            detail = f"{detail}; {e.get('field')}: {e.get('message')}"
        err.print(f"[red]error {response.status_code}[/]: {detail}")
        raise typer.Exit(1)
    result: dict[str, Any] = response.json()
    return result


@app.command()
def crawl(
    url: str,
    brand: Annotated[str, typer.Option(help="Whose documentation this is.")],
    max_pages: Annotated[int, typer.Option(help="Most pages to index.")] = 100,
    max_depth: Annotated[int, typer.Option(help="Most links away from the start page.")] = 3,
    follow: Annotated[bool, typer.Option(help="Follow progress until the crawl ends.")] = True,
) -> None:
    """Crawl a documentation site; prints the task id and follows its progress."""
    with _client() as client:
        body = {"url": url, "brand": brand, "max_pages": max_pages, "max_depth": max_depth}
        task = _check(client.post("/api/v1/crawl", json=body))
        console.print(f"task [bold]{task['task_id']}[/]")
        if not follow:
            return
        record = _follow(client, task["task_id"])
    result = record.get("result") or {}
    console.print(
        f"{record['status']}: {result.get('pages_ok', 0)} pages indexed, "
        f"{result.get('pages_failed', 0)} failed, {result.get('chunks_indexed', 0)} chunks"
    )
    if record["status"] != "succeeded":
        raise typer.Exit(1)


def _follow(client: httpx.Client, task_id: str) -> dict[str, Any]:
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("crawling", total=None)
        while True:
            record = _check(client.get(f"/api/v1/tasks/{task_id}"))
            progress = record.get("progress") or {}
            bar.update(
                job,
                completed=progress.get("done", 0),
                total=progress.get("total") or None,
                description=record["status"],
            )
            if record["status"] in TERMINAL_STATUSES:
                return record
            time.sleep(0.5)


@app.command()
def ask(
    question: str,
    brand: Annotated[str | None, typer.Option(help="Only this brand's documentation.")] = None,
    top_k: Annotated[int, typer.Option(help="Most sources.")] = 5,
) -> None:
    """Ask a question; prints the answer and its numbered sources."""
    with _client() as client:
        body: dict[str, Any] = {"question": question, "top_k": top_k}
        if brand:
            body["brand"] = brand
        answer = _check(client.post("/api/v1/query", json=body))
    console.print(answer["answer"])
    console.print()
    for n, source in enumerate(answer["sources"], 1):
        console.print(
            f"[{n}] {source['title']} — {source['url']}  [dim](score {source['score']:.3f})[/]"
        )


@app.command()
def task(task_id: str) -> None:
    """Show one task's record."""
    with _client() as client:
        console.print_json(data=_check(client.get(f"/api/v1/tasks/{task_id}")))


if __name__ == "__main__":
    app()
