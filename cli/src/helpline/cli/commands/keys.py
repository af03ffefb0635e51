"""API keys (admin): make one (shown once), list them, revoke one."""

from __future__ import annotations

from typing import Annotated

import typer

from helpline.cli.client import Gateway, err
from helpline.cli.output import JsonFlag, emit_json, fields, out, table, when

keys = typer.Typer(help="API keys: who may ask, submit or administer.")


@keys.command("list")
def list_keys(as_json: JsonFlag = False) -> None:
    """Every key, oldest first, without secrets."""
    with Gateway.from_settings() as gateway:
        rows = gateway.get("/keys")
    if as_json:
        emit_json(rows)
        return
    table(
        rows,
        [
            ("id", lambda k: k["id"]),
            ("name", lambda k: k["name"]),
            ("scopes", lambda k: k["scopes"]),
            ("brands", lambda k: k["brands"] if k["brands"] is not None else "every brand"),
            ("rate/min", lambda k: k.get("rate_per_minute")),
            ("created", lambda k: when(k.get("created_at"), short=True)),
            ("last used", lambda k: when(k.get("last_used_at"), short=True)),
        ],
        empty="no keys",
    )


@keys.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Whose key this is, to recognise it later.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(help="query, submit or admin (repeatable; default query)."),
    ] = None,
    brand: Annotated[
        list[str] | None, typer.Option(help="A brand it may use (repeatable; default every).")
    ] = None,
    rate_per_minute: Annotated[
        int | None, typer.Option(help="Requests a minute (0: unlimited; default the gateway's).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Make a key; it is printed this once (only its hash is kept)."""
    body: dict[str, object] = {"name": name, "scopes": scope or ["query"]}
    if brand:
        body["brands"] = brand
    if rate_per_minute is not None:
        body["rate_per_minute"] = rate_per_minute
    with Gateway.from_settings() as gateway:
        made = gateway.post("/keys", body)
    if as_json:
        emit_json(made)
        return
    fields(
        [
            ("id", made["id"]),
            ("name", made["name"]),
            ("scopes", made["scopes"]),
            ("brands", made["brands"] if made["brands"] is not None else "every brand"),
            ("key", made["key"]),
        ]
    )
    err.print("[yellow]the key is shown this once: keep it now[/]")


@keys.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (not the key itself).")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a key: every gateway replica refuses it within a second."""
    with Gateway.from_settings() as gateway:
        gateway.delete(f"/keys/{key_id}")
    if as_json:
        emit_json({"id": key_id, "revoked": True})
    else:
        out.print(f"revoked key {key_id}")
