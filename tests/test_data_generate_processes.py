"""Killing ``mfd data generate`` with ``kill -9`` leaves no worker or resource-tracker process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, ppid)`` of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[1] == pid and st[0] != "Z":
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"  # a zombie has exited; only its parent's wait is missing


def test_kill_9_of_generate_leaves_no_child(tmp_path):
    out = tmp_path / "big.h5"
    argv = [sys.executable, "-m", "mfdiffuser.cli", "data", "generate", "--env", "gaussian-squeeze",
            "--n-agents", "2000", "--env-arg", "horizon=200", "--quality", "medium", "--episodes", "4000",
            "--store-agents", "8", "--ref-episodes", "1", "--workers", "2", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        kids: list[int] = []
        while time.time() < deadline and proc.poll() is None:
            kids = _children(proc.pid)
            workers = [k for k in kids if "spawn_main" in _cmdline(k)]
            if len(workers) >= 2 and any("resource_tracker" in _cmdline(k) for k in kids):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert len([k for k in kids if "spawn_main" in _cmdline(k)]) >= 2, [_cmdline(k) for k in kids]
        # workers are running episodes (not only starting up) once the first files land
        wd = out.with_name(out.name + ".partial")
        while time.time() < deadline and not any(wd.glob("ep-*.npz")):
            time.sleep(0.05)
        kids = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.05)
        left = {k: _cmdline(k) for k in kids if _alive(k)}
        assert not left, f"processes left after kill -9 of their parent: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in _children(proc.pid):
            os.kill(k, signal.SIGKILL)
