from __future__ import annotations

import pytest

from helpline.scraper.parsing import Parser

PAGE = (
    "<html><head><title>Reset</title></head><body><main><h1>Reset</h1>"
    "<p>Hold the reset button for twelve seconds.</p><a href='/next.html'>next</a>"
    "</main></body></html>"
)
SHELL = (
    "<html><head><title>Docs</title><script type='module' src='/app.js'></script></head><body>"
    "<nav><a href='/guides.html'>Guides</a></nav><div id='app'>Loading…</div></body></html>"
)


@pytest.mark.parametrize("processes", [0, 1])
async def test_pages_parse_in_a_thread_or_in_worker_processes(processes: int) -> None:
    parser = Parser(processes=processes)
    try:
        doc, chunks, shell = await parser.parse(
            "http://docs.example/reset.html", PAGE, None, 700, 100
        )
        judged = await parser.parse("http://docs.example/app.html", SHELL, None, 700, 100, 200)
    finally:
        parser.close()
    assert doc.title == "Reset"
    assert doc.links == ["http://docs.example/next.html"]
    assert chunks[0].text.startswith("Reset\nHold the reset button for twelve seconds.")
    assert not shell.render  # not asked
    # Asked, the workers say why a shell needs a browser, and leave its placeholder unchunked.
    assert judged.shell.render
    assert "empty app root div#app" in judged.shell.reasons()
    assert judged.chunks == []
    assert judged.doc.links == ["http://docs.example/guides.html"]


async def test_auto_runs_one_niced_worker_per_core() -> None:
    import asyncio
    import os

    from helpline.scraper.parsing import WORKER_NICENESS, auto_processes

    assert auto_processes(-1) == min(4, len(os.sched_getaffinity(0)))
    assert auto_processes(3) == 3
    parser = Parser(processes=-1)
    try:
        assert parser._pool is not None
        loop = asyncio.get_running_loop()
        niceness = await loop.run_in_executor(parser._pool, os.nice, 0)
    finally:
        parser.close()
    # Workers yield the cores to the service (queries, the bus) when both want them.
    assert niceness == min(19, os.nice(0) + WORKER_NICENESS)


CHILD = """
import asyncio, os, sys
from helpline.scraper.parsing import Parser

async def main():
    parser = Parser(processes=1)
    loop = asyncio.get_running_loop()
    print(await loop.run_in_executor(parser._pool, os.getpid), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_workers_die_with_a_killed_service() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    service = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert service.stdout is not None
    worker = int(service.stdout.readline())
    service.send_signal(signal.SIGKILL)
    service.wait()
    service.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        # A zombie (dead, not yet reaped by an init that does not reap) counts as gone.
        with open(f"/proc/{worker}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("an extraction worker outlived its killed service")


STARTING = """
import asyncio, os
from helpline.scraper.parsing import Parser

async def main():
    parser = Parser(processes=1)
    asyncio.get_running_loop().run_in_executor(parser._pool, os.getpid)  # starts the worker
    print("spawned", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _children(pid: int) -> set[int]:
    from pathlib import Path

    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


def _gone(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie no init reaps counts as gone
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_worker_still_starting_when_its_service_is_killed_does_not_outlive_it() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    service = subprocess.Popen([sys.executable, "-c", STARTING], stdout=subprocess.PIPE, text=True)
    assert service.stdout is not None
    assert service.stdout.readline().strip() == "spawned"
    children = _children(service.pid)
    assert children, "the pool started its worker"
    service.send_signal(signal.SIGKILL)  # while the worker is still importing
    service.wait()
    service.stdout.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(_gone(c) for c in children):
        time.sleep(0.1)
    left = [c for c in children if not _gone(c)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "a worker outlived the service killed while it was starting"
