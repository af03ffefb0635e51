"""Webhooks: receivers told of events (signed per Standard Webhooks), their deliveries."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from helpline.cli.client import Gateway, err
from helpline.cli.commands.tasks import submitted
from helpline.cli.output import JsonFlag, emit_json, fields, out, table, when

webhooks = typer.Typer(help="Webhooks: receivers told when tasks end and pages are indexed.")

WebhookId = Annotated[str, typer.Argument(help="The webhook's id.")]
EVENTS = (
    "task.succeeded, task.failed, crawl.completed, page.indexed, page.removed or source.refreshed"
)


def _show(webhook: dict[str, Any]) -> None:
    fields(
        [
            ("id", webhook["id"]),
            ("url", webhook["url"]),
            ("events", webhook["events"]),
            ("brand", webhook["brand"] if webhook["brand"] is not None else "every brand"),
            ("created", when(webhook["created_at"])),
            ("updated", when(webhook["updated_at"])),
            ("secret", webhook.get("secret")),
        ]
    )


def _print(webhook: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        emit_json(webhook)
    else:
        _show(webhook)


@webhooks.command("list")
def list_webhooks(as_json: JsonFlag = False) -> None:
    """Every webhook, oldest first, without secrets."""
    with Gateway.from_settings() as gateway:
        page = gateway.get("/webhooks")
    if as_json:
        emit_json(page)
        return
    table(
        page["items"],
        [
            ("id", lambda w: w["id"]),
            ("brand", lambda w: w["brand"] if w["brand"] is not None else "every brand"),
            ("events", lambda w: w["events"]),
            ("url", lambda w: w["url"]),
        ],
        empty="no webhooks",
    )


@webhooks.command("show")
def show(webhook_id: WebhookId, as_json: JsonFlag = False) -> None:
    """One webhook, without its secret."""
    with Gateway.from_settings() as gateway:
        _print(gateway.get(f"/webhooks/{webhook_id}"), as_json=as_json)


@webhooks.command("add")
def add(
    url: Annotated[str, typer.Argument(help="Where deliveries are POSTed.")],
    event: Annotated[list[str], typer.Option(help=f"{EVENTS} (repeatable).")],
    brand: Annotated[
        str | None, typer.Option(help="Only this brand's events (default: every brand's).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a receiver; its signing secret is printed this once."""
    body: dict[str, Any] = {"url": url, "events": event}
    if brand is not None:
        body["brand"] = brand
    with Gateway.from_settings() as gateway:
        _print(gateway.post("/webhooks", body), as_json=as_json)
    if not as_json:
        err.print("[yellow]the secret is shown this once: keep it now[/]")


@webhooks.command("update")
def update(
    webhook_id: WebhookId,
    url: Annotated[str | None, typer.Option(help="A new receiver URL.")] = None,
    event: Annotated[
        list[str] | None, typer.Option(help=f"{EVENTS} (repeatable; replaces the list).")
    ] = None,
    brand: Annotated[str | None, typer.Option(help="Only this brand's events.")] = None,
    every_brand: Annotated[
        bool, typer.Option("--every-brand", help="Every brand's events.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Change a webhook's URL, events or brand (the secret stays)."""
    body: dict[str, Any] = {}
    if url is not None:
        body["url"] = url
    if event:
        body["events"] = event
    if brand is not None:
        body["brand"] = brand
    if every_brand:
        body["brand"] = None
    with Gateway.from_settings() as gateway:
        _print(gateway.patch(f"/webhooks/{webhook_id}", body), as_json=as_json)


@webhooks.command("delete")
def delete(webhook_id: WebhookId, as_json: JsonFlag = False) -> None:
    """Remove a webhook: no more deliveries start."""
    with Gateway.from_settings() as gateway:
        gateway.delete(f"/webhooks/{webhook_id}")
    if as_json:
        emit_json({"id": webhook_id, "deleted": True})
    else:
        out.print(f"deleted webhook {webhook_id}")


@webhooks.command("test")
def send_test(
    webhook_id: WebhookId,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the delivery to its end.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Send the webhook a `ping`, a delivery like any other (signed, retried, listed)."""
    with Gateway.from_settings() as gateway:
        accepted = gateway.post(f"/webhooks/{webhook_id}/test")
        submitted(gateway, accepted, wait=wait, as_json=as_json)


@webhooks.command("deliveries")
def deliveries(
    webhook_id: WebhookId,
    limit: Annotated[int, typer.Option(help="How many, newest first (1-200).")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """A webhook's recent deliveries: event, status, HTTP status, attempts, error."""
    with Gateway.from_settings() as gateway:
        page = gateway.get(f"/webhooks/{webhook_id}/deliveries", limit=limit)
    if as_json:
        emit_json(page)
        return
    table(
        page["items"],
        [
            ("id", lambda d: d["id"]),
            ("event", lambda d: d["event"]),
            ("status", lambda d: d["status"]),
            ("http", lambda d: d.get("status_code")),
            ("attempts", lambda d: d["attempts"]),
            ("at", lambda d: when(d.get("last_attempt_at") or d["created_at"], short=True)),
            ("error", lambda d: d.get("error")),
        ],
        empty="no deliveries",
    )
