"""Waiting on task records through the API, and on anything else that settles
asynchronously (bounded, never a bare sleep-and-hope)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "expired", "cancelled"}


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float, every_s: float = 0.2
) -> bool:
    """Poll `check` until it holds or the time is up; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every_s)
    return await check()


async def wait_terminal(
    client: httpx.AsyncClient, task_id: str, timeout_s: float = 60.0
) -> dict[str, Any]:
    """Poll a task until it is terminal; fail the test with its last record otherwise."""
    deadline = time.monotonic() + timeout_s
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await client.get(f"/api/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        record = response.json()
        if record["status"] in TERMINAL:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"task {task_id} not terminal after {timeout_s}s: {record}"
        f"{await _children_summary(client, task_id)}"
    )


async def _children_summary(client: httpx.AsyncClient, task_id: str) -> str:
    """How a parent's children stand, to tell a stuck parent from stuck children."""
    listed = await client.get("/api/v1/tasks", params={"limit": 1000})
    if listed.status_code != 200:
        return ""
    statuses = Counter(t["status"] for t in listed.json() if t.get("parent_id") == task_id)
    return f"; its children: {dict(statuses)}" if statuses else ""
