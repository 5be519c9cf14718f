"""The watchdog ends a killed process's descendants; the /proc helpers read the process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mfdiffuser.watchdog import descendants, is_running, start_time

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")


def test_process_tree_helpers():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert child.pid in descendants(os.getpid())
        assert is_running(child.pid) and start_time(child.pid) is not None
    finally:
        child.kill()
        child.wait()
    assert not is_running(child.pid) and start_time(child.pid) is None


def test_descendants_are_killed_with_their_parent():
    """A grandchild in its own session (no parent-death signal reaches it) dies with the driver."""
    code = (
        "import subprocess, sys, time\n"
        "from mfdiffuser.raycluster import _start_watchdog\n"
        "_start_watchdog()\n"
        "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert driver.stdout is not None
        sleeper = int(driver.stdout.readline())
        time.sleep(1.2)  # the watchdog looks at the tree twice a second
        kids = descendants(driver.pid)
        assert sleeper in kids and len(kids) >= 2  # the sleeper and the watchdog
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(is_running(k) for k in kids):
            time.sleep(0.05)
        assert not [k for k in kids if is_running(k)], "the sleeper or the watchdog outlived the driver"
    finally:
        if driver.poll() is None:
            driver.kill()
