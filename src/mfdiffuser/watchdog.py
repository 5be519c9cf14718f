"""Process-tree helpers (Linux ``/proc``) and a watchdog that ends a process's descendants once it dies.

Run as ``python -m mfdiffuser.watchdog PID`` with a pipe from PID on its standard input: it notes
PID's descendants twice a second and, when the pipe reaches end of file (PID exited or was killed),
sends SIGKILL to every noted process that still runs (same pid and start time, so a reused pid is
left alone). Ray's workers and agents otherwise take tens of seconds to notice that their raylet died
with the driver.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from pathlib import Path

POLL_S = 0.5
"""Seconds between two looks at the process tree."""


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), or None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot, as text), or None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else fields[19]


def is_running(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie only waits for its parent's wait)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def descendants(root: int) -> list[int]:
    """Pids of the children of ``root``, their children, and so on (zombies included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def watch(parent: int, pipe_fd: int = 0) -> None:
    """Note ``parent``'s descendants until ``pipe_fd`` reaches end of file, then kill those still running."""
    me = os.getpid()
    seen: dict[int, str | None] = {}
    while True:
        ready, _, _ = select.select([pipe_fd], [], [], POLL_S)
        if ready and not os.read(pipe_fd, 1):
            break
        for pid in descendants(parent):
            if pid != me and pid not in seen:
                seen[pid] = start_time(pid)
    for pid, start in seen.items():
        if start is not None and start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":  # pragma: no cover - runs as its own process
    watch(int(sys.argv[1]))
