"""Child processes: starting ones that die with their parent, stopping them, and finding,
measuring and killing process groups through /proc (Linux; elsewhere the scans find nothing).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child (`preexec_fn`, a pool initializer): get `sig` when the parent dies (Linux)."""
    # Asked of the kernel, so it holds even when the parent is killed by SIGKILL and can run
    # no cleanup of its own: nothing the parent started is orphaned.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def start_child(args: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(args, ...)` whose child gets SIGTERM when this process dies (Linux)."""
    return subprocess.Popen(
        args, preexec_fn=die_with_parent if sys.platform == "linux" else None, **popen_kwargs
    )


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it lingers past `timeout_s`; waited for either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def pdeathsig_script(executable: str) -> str | None:
    """A shell script that runs `executable` under `setpriv --pdeathsig KILL`; None without setpriv."""
    # For children started by code we do not control (Playwright starts Chromium itself, with
    # no preexec hook): pointing it at this script makes the child die with its parent.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return (
        f'#!/bin/sh\nexec {_sh_quote(setpriv)} --pdeathsig KILL -- {_sh_quote(executable)} "$@"\n'
    )


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def all_pids() -> list[int]:
    """Every process id in /proc (none where there is no /proc)."""
    return (
        [int(name) for name in os.listdir("/proc") if name.isdigit()]
        if os.path.isdir("/proc")
        else []
    )


def read_bytes(path: str) -> bytes:
    """The contents of `path`, or b"" when it cannot be read (a process that just exited)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/`pid`/stat after the command name (state first); [] if gone."""
    raw = read_bytes(f"/proc/{pid}/stat").decode(errors="replace")
    # The command name is in parentheses and may hold spaces; fields after it are plain.
    return raw[raw.rfind(")") + 2 :].split() if ")" in raw else []


def marked_processes(marker: str) -> list[int]:
    """Processes whose command line carries `marker` as one of its arguments."""
    needle = marker.encode()
    return [pid for pid in all_pids() if needle in read_bytes(f"/proc/{pid}/cmdline").split(b"\0")]


def group_members(pgid: int) -> list[int]:
    """Processes in process group `pgid` (zombies left out)."""
    members = []
    for pid in all_pids():
        fields = stat_fields(pid)
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(pid)
    return members


def find_process_group(marker: str) -> int | None:
    """The process group of the first process carrying `marker`, or None."""
    for pid in marked_processes(marker):
        with contextlib.suppress(OSError):
            return os.getpgid(pid)
    return None


def group_memory_bytes(pgid: int) -> int:
    """Memory of a process group: the sum of its processes' proportional set sizes (PSS)."""
    # Processes of one program (Chromium's) share most of their pages, so summing RSS would
    # count them many times. Where PSS is not reported, RSS is the fallback.
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in group_members(pgid):
        rollup = read_bytes(f"/proc/{pid}/smaps_rollup")
        pss = next(
            (line.split()[1] for line in rollup.splitlines() if line.startswith(b"Pss:")), None
        )
        if pss is not None:
            total += int(pss) * 1024
            continue
        parts = read_bytes(f"/proc/{pid}/statm").split()
        if len(parts) > 1:
            total += int(parts[1]) * page
    return total


def kill_group(pgid: int) -> None:
    """SIGKILL process group `pgid`, unless it is empty or our own."""
    # Never our own group: a child started detached (as Chromium is) has a group of its own.
    if pgid == os.getpgid(0) or not group_members(pgid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_marked(marker: str) -> None:
    """SIGKILL the process groups of processes carrying `marker` (just the process, in ours)."""
    for pid in marked_processes(marker):
        with contextlib.suppress(OSError):
            pgid = os.getpgid(pid)
            if pgid != os.getpgid(0):
                os.killpg(pgid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
