"""A fetched page to its document and chunks, in worker processes when there are cores to spare.

Extraction is pure Python over lxml trees and holds the GIL: threads give one core in all,
and in the service's own process every page parsed stalls its event loop (and, under
`helpline up`, the queries it answers) for the page's 10-30 ms. `Parser(processes=N)` runs
it in N spawned worker processes instead (spawned, not forked: the scraper's process has
threads, and a fork copies their locks), niced so that interactive work keeps the cores
first. Workers start when the first page arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import resource_tracker
from typing import NamedTuple

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from helpline.common.chunking import Document, chunk_document
from helpline.common.messages import Chunk
from helpline.common.processes import die_with_parent
from helpline.scraper.extract import extract_tree, parse_html
from helpline.scraper.pdf import extract_pdf
from helpline.scraper.shells import Verdict, assess
from helpline.scraper.spans import record_steps


class Parsed(NamedTuple):
    doc: Document
    chunks: list[Chunk]
    #: Whether the page needs a browser, and why (`shells.assess`), when that was asked.
    shell: Verdict


#: When extraction started, when it ended and chunking started, and when chunking ended
#: (wall clock in ns: comparable across processes), for the page's spans.
Times = tuple[int, int, int]


def parse_page(
    url: str,
    html: str,
    pdf: bytes | None,
    max_chars: int,
    overlap_chars: int,
    judge_chars: int | None = None,
) -> Parsed:
    """Extract an HTML page (or a PDF, when `pdf` is given) and chunk it; with `judge_chars`,
    also say whether the page is a shell for a browser to fill in."""
    return _timed_parse(url, html, pdf, max_chars, overlap_chars, judge_chars)[0]


def _timed_parse(
    url: str,
    html: str,
    pdf: bytes | None,
    max_chars: int,
    overlap_chars: int,
    judge_chars: int | None = None,
) -> tuple[Parsed, Times]:
    """`parse_page`, and when its steps ran."""
    started = time.time_ns()
    if pdf is not None:
        doc = extract_pdf(pdf, url)
        extracted = time.time_ns()
        chunks = chunk_document(doc, max_chars, overlap_chars)
        return Parsed(doc, chunks, Verdict()), (started, extracted, time.time_ns())
    root = parse_html(html)
    # Read before extraction, which prunes the tree.
    shell = assess(root, judge_chars) if judge_chars is not None else Verdict()
    doc = extract_tree(root, url)
    extracted = time.time_ns()
    # A shell is not chunked: what a browser makes of it is.
    chunks = [] if shell.render else chunk_document(doc, max_chars, overlap_chars)
    return Parsed(doc, chunks, shell), (started, extracted, time.time_ns())


def _record_steps(parsed: Parsed, times: Times, pdf: bool) -> None:
    started, extracted, chunked = times
    extract: dict[str, AttributeValue] = {
        "helpline.page.pdf": pdf,
        "helpline.page.blocks": len(parsed.doc.blocks),
        "helpline.page.links": len(parsed.doc.links),
        "helpline.page.shell": parsed.shell.render,
    }
    chunk: dict[str, AttributeValue] = {"helpline.chunks": len(parsed.chunks)}
    record_steps([("extract", started, extracted, extract), ("chunk", extracted, chunked, chunk)])


#: How much lower the extraction workers' CPU priority is than the scraper's (nice).
WORKER_NICENESS = 10
MAX_AUTO_PROCESSES = 4


def auto_processes(setting: int) -> int:
    """The worker processes a setting asks for: -1 is one per usable core, at most 4."""
    if setting >= 0:
        return setting
    return min(MAX_AUTO_PROCESSES, len(os.sched_getaffinity(0)))


def _init_worker() -> None:
    """A worker yields the cores to the service, and dies with it (even when it is killed)."""
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    die_with_parent(signal.SIGKILL)
    # A service killed while this worker was still starting died before the signal was
    # asked for, and would never send it: the worker now belongs to init. Leave.
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(0)


class Parser:
    """Runs `parse_page` in a process pool (`processes` > 0; -1: one per core) or a thread."""

    def __init__(self, processes: int = 0) -> None:
        self._pool: Executor | None = None
        processes = auto_processes(processes)
        if processes > 0:
            self._pool = ProcessPoolExecutor(
                max_workers=processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
            )

    async def parse(
        self,
        url: str,
        html: str,
        pdf: bytes | None,
        max_chars: int,
        overlap_chars: int,
        judge_chars: int | None = None,
    ) -> Parsed:
        """`parse_page` off the event loop; its extract and chunk spans in the current trace."""
        return (await self.parse_timed(url, html, pdf, max_chars, overlap_chars, judge_chars))[0]

    async def parse_timed(
        self,
        url: str,
        html: str,
        pdf: bytes | None,
        max_chars: int,
        overlap_chars: int,
        judge_chars: int | None = None,
    ) -> tuple[Parsed, Times]:
        """`parse`, and when its steps ran (for the page's lineage)."""
        args = (url, html, pdf, max_chars, overlap_chars, judge_chars)
        if self._pool is None:
            parsed, times = await asyncio.to_thread(_timed_parse, *args)
        else:
            loop = asyncio.get_running_loop()
            parsed, times = await loop.run_in_executor(self._pool, _timed_parse, *args)
        if trace.get_current_span().is_recording():
            _record_steps(parsed, times, pdf is not None)
        return parsed, times

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            # The pool's queues started multiprocessing's resource tracker; stop and reap it
            # now, or it outlives the service as a zombie where no init process reaps.
            with contextlib.suppress(Exception):
                resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]
