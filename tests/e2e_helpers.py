"""Waiting on task records through the API (bounded, never a bare sleep-and-hope)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "expired", "cancelled"}


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
    raise AssertionError(f"task {task_id} not terminal after {timeout_s}s: {record}")
