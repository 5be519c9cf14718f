"""Killing ``mfd data generate`` with ``kill -9`` leaves no worker or resource-tracker process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mfdiffuser.watchdog import descendants, is_running

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")


def _children(pid: int) -> list[int]:
    return [k for k in descendants(pid) if is_running(k)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


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
        while time.time() < deadline and any(is_running(k) for k in kids):
            time.sleep(0.05)
        left = {k: _cmdline(k) for k in kids if is_running(k)}
        assert not left, f"processes left after kill -9 of their parent: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in _children(proc.pid):
            os.kill(k, signal.SIGKILL)
