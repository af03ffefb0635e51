"""Operations (admin keys): queues, workers, breakers, the system's status, dead letters and
the answer cache."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from helpline.cli.client import Gateway
from helpline.cli.commands.tasks import submitted
from helpline.cli.output import JsonFlag, emit_json, fields, out, seconds, table, text, when

dlq = typer.Typer(help="Dead letters: tasks that gave up after their last attempt.")
cache = typer.Typer(help="The answer cache.")


def _queue_table(rows: list[dict[str, Any]]) -> None:
    table(
        rows,
        [
            ("kind", lambda r: r["kind"]),
            ("priority", lambda r: r["priority"]),
            ("pending", lambda r: r["pending"]),
            ("in flight", lambda r: r["in_flight"]),
            ("redelivered", lambda r: r["redelivered"]),
            ("oldest", lambda r: seconds(r.get("oldest_age_s"))),
        ],
        empty="no queues",
    )


def _worker_table(rows: list[dict[str, Any]]) -> None:
    table(
        rows,
        [
            ("service", lambda r: r["service"]),
            ("replicas", lambda r: r["replica_count"]),
            ("concurrency", lambda r: r["concurrency"]),
            ("busy", lambda r: r["busy"]),
            ("yielding", lambda r: r.get("batch_yielding")),
            ("last seen", lambda r: when(r.get("last_seen"), short=True)),
        ],
        empty="no workers seen",
    )


def queues(as_json: JsonFlag = False) -> None:
    """Per kind and priority: waiting, in flight, redelivered, the oldest waiting task's age."""
    with Gateway.from_settings() as gateway:
        rows = gateway.get("/queues")
    if as_json:
        emit_json(rows)
    else:
        _queue_table(rows)


def workers(as_json: JsonFlag = False) -> None:
    """Per service: replicas (from heartbeats), concurrency, busy, last seen."""
    with Gateway.from_settings() as gateway:
        rows = gateway.get("/workers")
    if as_json:
        emit_json(rows)
    else:
        _worker_table(rows)


def breakers(as_json: JsonFlag = False) -> None:
    """Every circuit breaker per replica, and its state."""
    with Gateway.from_settings() as gateway:
        replicas = gateway.get("/breakers")
    if as_json:
        emit_json(replicas)
        return
    rows = [{"replica": r["replica"], **b} for r in replicas for b in r["breakers"]]
    table(
        rows,
        [
            ("replica", lambda r: r["replica"]),
            ("breaker", lambda r: r["name"]),
            ("state", lambda r: r["state"]),
            ("failures", lambda r: r["consecutive_failures"]),
            ("opened", lambda r: r["times_opened"]),
            ("retry in", lambda r: seconds(r["retry_after_s"]) if r["retry_after_s"] else ""),
        ],
        empty="no breakers",
    )


def status(as_json: JsonFlag = False) -> None:
    """Health, the bus, queues, workers and open breakers in one view; exit 1 unless ok."""
    with Gateway.from_settings() as gateway:
        view = gateway.get("/system/status")
    if as_json:
        emit_json(view)
    else:
        bus = view["bus"]
        fields(
            [
                ("status", view["status"]),
                ("bus", f"{bus.get('url')} connected: {text(bus.get('connected'))}"),
                ("open breakers", ", ".join(b["name"] for b in view["open_breakers"]) or "none"),
            ]
        )
        out.print()
        _queue_table(view["queues"])
        out.print()
        _worker_table(view["workers"])
    if view["status"] != "ok":
        raise typer.Exit(1)


@dlq.command("list")
def dlq_list(
    kind: Annotated[str | None, typer.Option(help="Only this kind's.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first (1-1000).")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Dead letters, newest first: the task, its kind, attempts and last error."""
    with Gateway.from_settings() as gateway:
        rows = gateway.get("/dlq", kind=kind, limit=limit)
    if as_json:
        emit_json(rows)
        return
    table(
        rows,
        [
            ("task", lambda r: r["task_id"]),
            ("kind", lambda r: r["kind"]),
            ("attempts", lambda r: r["attempts"]),
            ("failed", lambda r: when(r.get("failed_at"), short=True)),
            ("url", lambda r: r["task"].get("url") if isinstance(r["task"], dict) else None),
            ("error", lambda r: r["error"].get("message")),
        ],
        empty="no dead letters",
    )


@dlq.command("replay")
def dlq_replay(
    task_id: Annotated[str, typer.Argument(help="The dead task's id.")],
    priority: Annotated[str | None, typer.Option(help="The new task's (default low).")] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the new task to its end.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Submit a dead task again as a new task; the letter is removed."""
    with Gateway.from_settings() as gateway:
        body = {"priority": priority} if priority else None
        accepted = gateway.post(f"/dlq/{task_id}/replay", body)
        submitted(gateway, accepted, wait=wait, as_json=as_json)


@cache.command("stats")
def cache_stats(as_json: JsonFlag = False) -> None:
    """Hits and misses (this gateway replica), entries and bytes (all of them)."""
    with Gateway.from_settings() as gateway:
        stats = gateway.get("/cache/stats")
    if as_json:
        emit_json(stats)
        return
    fields(
        [
            ("entries", stats["entries"]),
            ("bytes", stats["bytes"]),
            ("hits", stats["hits"]),
            ("misses", stats["misses"]),
            ("hit rate", f"{stats['hit_rate']:.0%}"),
            ("ttl", seconds(stats["ttl_s"])),
        ]
    )


@cache.command("clear")
def cache_clear(as_json: JsonFlag = False) -> None:
    """Drop every cached answer, for every gateway replica."""
    with Gateway.from_settings() as gateway:
        cleared = gateway.post("/cache/clear")
    if as_json:
        emit_json(cleared)
    else:
        out.print(f"cleared {cleared['cleared']} cached answers")
