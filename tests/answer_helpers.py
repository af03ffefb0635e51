"""A small documentation site the test rewrites, and a way to (re)index one of its pages."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from conftest import System
from e2e_helpers import wait_terminal

PAGE = """<!doctype html>
<html><head><title>{title}</title></head>
<body><main><article>
<h1>{title}</h1>
{paragraphs}
</article></main></body></html>
"""


def write_page(root: Path, path: str, title: str, *paragraphs: str) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    before = target.stat().st_mtime if target.exists() else None
    target.write_text(PAGE.format(title=title, paragraphs=body), encoding="utf-8")
    if before is not None:
        # HTTP dates have whole seconds: an edit within the second of the last scrape would
        # look unmodified to If-Modified-Since. A real edit comes later; make this one too.
        later = max(time.time(), before + 2)
        os.utime(target, (later, later))


async def index_page(system: System, url: str, brand: str) -> dict[str, Any]:
    """Scrape one page into the index and wait until it is searchable."""
    response = await system.client.post("/api/v1/scrape", json={"url": url, "brand": brand})
    assert response.status_code == 202, response.text
    record = await wait_terminal(system.client, response.json()["task_id"], timeout_s=60)
    assert record["status"] == "succeeded", record
    return record


async def ask(system: System, question: str, brand: str | None, **extra: object) -> dict[str, Any]:
    response = await system.client.post(
        "/api/v1/query", json={"question": question, "brand": brand, **extra}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
